"""Reading finished runs from the results store (`results/<suite>/runs.jsonl`, one JSON row per run)."""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

RESULTS_DIR = Path("results")


def runs_path(suite: str, root: Path | None = None) -> Path:
    return (root or RESULTS_DIR) / suite / "runs.jsonl"


@contextlib.contextmanager
def store_lock(path: Path):
    """An exclusive lock on a store file (``.runs.jsonl.lock`` beside it) for read-modify-write:
    rows of concurrent writers are never lost. fcntl locks also hold on NFS with lockd; without
    fcntl (Windows) there is no lock and one writer per store is assumed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover (Windows)
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def rows_text(rows: list[dict]) -> str:
    """Rows as a store holds them: one JSON object a line, keys sorted."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def append_rows(path: Path, rows: list[dict]) -> None:
    """Add rows by rewriting the whole file atomically (never a torn line), under the store's
    lock so that concurrent writers (two `bench run`s, shards on a shared disk) lose nothing."""
    from upstream_quant.io import write_atomic

    with store_lock(path):
        existing = path.read_text() if path.is_file() else ""
        if existing and not existing.endswith("\n"):
            existing += "\n"
        write_atomic(path, existing + rows_text(rows))


def load_runs(suite: str, root: Path | None = None) -> list[dict]:
    """All complete rows of a suite."""
    return load_rows(runs_path(suite, root))


def load_rows(path: Path) -> list[dict]:
    """Rows of one store file; a torn last line (interrupted write) is reported and skipped."""
    if not path.is_file():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{lineno}: unreadable row skipped")
            continue
        if not isinstance(row, dict):
            warnings.warn(f"{path}:{lineno}: a JSON {type(row).__name__}, not a row object; skipped")
            continue
        rows.append(row)
    return rows


def paper_config(row: dict) -> str | None:
    """The paper table's row a results row corresponds to (``hubert_base/2bit``): rows of the paper's task (ASR) at a
    fixed bit width (full precision is ``fp16``), any method and protocol, a packed file by the
    one width its layers hold; None for others (mixed precision has no single width)."""
    from .reference import paper_task

    if row.get("task") != paper_task() or "upstream" not in row or row.get("layers") == "all":
        return None  # the paper's rows quantize the transformer's layers (layers=all quantizes the CNN too)
    bits = row.get("bits")
    if row.get("method") not in ("fp", "packed") and (bits is None or bits != bits):  # no single width (mixed); NaN in frames
        return None
    if row.get("method") == "fp":
        return f"{row['upstream']}/fp16"
    if row.get("method") == "packed":  # a file as it is: the widths its layers hold
        widths = list(row.get("bit_widths") or [])
        if len(widths) > 1:
            return None
        return f"{row['upstream']}/{int(widths[0])}bit" if widths else f"{row['upstream']}/fp16"
    return f"{row['upstream']}/{int(row['bits'])}bit"  # int(): a DataFrame holds bits as floats


def runs_frame(suite: str, root: Path | None = None):
    """The store as a flat DataFrame: one row per run, metrics as ``test_wer`` etc. columns."""
    import pandas as pd

    flat = []
    for row in load_runs(suite, root):
        base = {k: row.get(k) for k in ("config", "upstream", "method", "bits", "group_size", "quant", "protocol", "task",
                                        "data", "seed", "storage_mb", "stored_mb", "fp16_mb", "packed_mb", "est_runtime",
                                        "est_runtime_full", "wall_seconds", "git_commit")}
        base["layout"] = (row.get("spec", {}).get("data_config") or {}).get("layout")
        base["featurizer_weights"] = row.get("featurizer_weights")
        base["per_utterance"] = row.get("per_utterance")  # None in rows written before they were kept
        base["bit_widths"] = row.get("bit_widths") or []
        q = row.get("spec", {}).get("quant", {})
        if row.get("bit_map") and (q.get("budget_mb") is not None or q.get("budget_bits") is not None):
            # a model allocated to a budget from a calibration group: for the allocation-difference column
            base["bit_map"] = row["bit_map"]
            base["alloc_key"] = (row.get("upstream"), q.get("budget_mb"), q.get("order"), q.get("clip"), q.get("act_bits"),
                                 q.get("budget_bits"), q.get("group_size"), q.get("symmetric"))
            base["calib_group"] = q.get("calib")
        if row.get("quantize_seconds") is not None:  # post-training methods: the time the quantization took
            base["quantize_s"] = row["quantize_seconds"]
        if row.get("deploy"):  # deployed rows: measured against fp32 (bench.runner.deploy_measurements)
            base |= {k: row.get(k) for k in ("deploy", "measured_runtime", "weights_mb_resident", "weights_mb_resident_fp32")}
        flat.append(base | {k: v for k, v in row.get("metrics", {}).items()})
    return pd.DataFrame(flat)

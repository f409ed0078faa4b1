"""Reading finished runs from the results store (`results/<suite>/runs.jsonl`, one JSON row per run)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

RESULTS_DIR = Path("results")


def runs_path(suite: str, root: Path | None = None) -> Path:
    return (root or RESULTS_DIR) / suite / "runs.jsonl"


def load_runs(suite: str, root: Path | None = None) -> list[dict]:
    """All complete rows of a suite; a torn last line (interrupted write) is reported and skipped."""
    path = runs_path(suite, root)
    if not path.is_file():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{lineno}: unreadable row skipped")
    return rows


def paper_config(row: dict) -> str | None:
    """The paper table's row name for a results row (``hubert_base/2bit``), for retrain ASR rows only."""
    if row.get("protocol") != "retrain" or row.get("task") != "asr" or "upstream" not in row:
        return None
    return f"{row['upstream']}/{'fp16' if row.get('method') == 'fp' else str(row.get('bits')) + 'bit'}"


def metric_by_config(suite: str, metric: str, root: Path | None = None) -> dict[str, float]:
    """Mean of `metric` over the finished runs of each paper-table config in `suite`."""
    values: dict[str, list[float]] = {}
    for row in load_runs(suite, root):
        value = row.get("metrics", {}).get(metric)
        key = paper_config(row)
        if key and value is not None:
            values.setdefault(key, []).append(float(value))
    return {config: sum(v) / len(v) for config, v in values.items()}


def runs_frame(suite: str, root: Path | None = None):
    """The store as a flat DataFrame: one row per run, metrics as ``test_wer`` etc. columns."""
    import pandas as pd

    flat = []
    for row in load_runs(suite, root):
        base = {k: row.get(k) for k in ("config", "upstream", "method", "bits", "quant", "protocol", "task", "data", "seed",
                                        "storage_mb", "stored_mb", "est_runtime", "wall_seconds", "git_commit")}
        base["featurizer_weights"] = row.get("featurizer_weights")
        flat.append(base | {k: v for k, v in row.get("metrics", {}).items()})
    return pd.DataFrame(flat)

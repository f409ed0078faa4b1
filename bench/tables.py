"""Generated tables (pandas)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from upstream_quant.accounting import cost_report

from upstream_quant.io import write_atomic
from .reference import paper_reference, paper_task
from .results import paper_config, runs_frame
from .stats import DEFAULT_RESAMPLES
from .superb_score import superb_scores


@dataclass(frozen=True)
class PaperRow:
    config: str
    upstream: str
    bits: int
    convention: str  # storage convention shown in storage_mb


# The paper's HuBERT rows follow its (reconstructed) rule; its DistilHuBERT baseline is the
# published model at 16 bits.
PAPER_ROWS = (
    PaperRow("hubert_base/fp16", "hubert_base", 16, "paper"),
    PaperRow("hubert_base/8bit", "hubert_base", 8, "paper"),
    PaperRow("hubert_base/4bit", "hubert_base", 4, "paper"),
    PaperRow("hubert_base/2bit", "hubert_base", 2, "paper"),
    PaperRow("hubert_base/1bit", "hubert_base", 1, "paper"),
    PaperRow("distilhubert/fp16", "distilhubert", 16, "fp16"),
)

PAPER_COLUMNS = [
    "paper_row", "config", "method", "protocol", "storage_mb", "stored_mb", "packed_mb", "est_runtime",
    "est_runtime_full", "wer", "wer_sd", "seeds", "paper_storage_mb", "paper_est_runtime", "paper_wer",
]
# Order of our rows under one paper row: protocols, then methods (trained before post-training).
_PROTOCOL_ORDER = {"retrain": 0, "reuse": 1}
def _method_order(method: str) -> int:
    """Full precision first, then the registered methods by their ``order`` (trained ones first)."""
    from upstream_quant.methods import METHODS

    return 0 if method == "fp" else METHODS[method].order if method in METHODS else 9


PAPER_STUDENT = "distilhubert"  # the paper's headline compares low-bit HuBERT with it


def paper_table(results_root: Path | None = None, seconds: float = 10.0, resamples: int = DEFAULT_RESAMPLES) -> pd.DataFrame:
    """The 1-bit/2-bit comparison table: each of the paper's rows, then one line per configuration
    of ours that corresponds to it (upstream and bit width; every method and protocol on a line
    of its own, seeds of the same configuration averaged), with our measured storage and WER
    beside the paper's figures. A paper row nothing of ours ran for gets one line costed from
    the released architecture, WER empty."""
    runs = runs_frame("paper", results_root)
    stats = pd.DataFrame()
    if not runs.empty:
        runs = runs[runs["task"] == paper_task()].copy()
        runs["paper_row"] = [paper_config(r) for r in runs.to_dict("records")]
        if "test_wer" in runs:
            stats = metric_cells(runs.dropna(subset=["test_wer"]), "test_wer", "wer", PAPER_STUDENT, resamples)
    lines = []
    for spec in PAPER_ROWS:
        mine = runs[runs["paper_row"] == spec.config] if not runs.empty else runs
        if mine.empty:
            report = cost_report(spec.upstream, spec.bits, seconds)
            lines.append({"paper_row": spec.config, "config": None, "method": None, "protocol": None,
                          "storage_mb": round(report.storage_mb[spec.convention], 2),
                          "stored_mb": round(report.storage_mb["stored"], 2), "est_runtime": round(report.est_runtime["encoder"], 3),
                          "est_runtime_full": round(report.est_runtime["full"], 3)})
            continue
        storage = "storage_mb" if spec.convention == "paper" else "fp16_mb"
        groups = sorted(mine.groupby("config", sort=False),
                        key=lambda kv: (_PROTOCOL_ORDER.get(kv[1]["protocol"].iloc[0], 9),
                                        _method_order(kv[1]["method"].iloc[0]), kv[0]))
        for config, group in groups:
            first = group.iloc[0]
            wer = group["test_wer"] if "test_wer" in group else pd.Series(dtype=float)
            lines.append({
                "paper_row": spec.config, "config": config, "method": first["method"], "protocol": first["protocol"],
                "storage_mb": _round(first.get(storage), 2), "stored_mb": _round(first.get("stored_mb"), 2),
                "packed_mb": _round(first.get("packed_mb"), 2), "est_runtime": _round(first.get("est_runtime"), 3),
                "est_runtime_full": _round(first.get("est_runtime_full"), 3),
                "wer": _round(wer.mean(), 2), "wer_sd": _round(wer.std(), 2), "seeds": int(group["seed"].nunique()),
                **({k: v for k, v in stats.loc[config].items() if k not in ("wer", "wer_sd") and not pd.isna(v)}
                   if config in stats.index else {}),
            })
    ours = pd.DataFrame(lines)
    measured = measured_runtimes(results_root)
    columns = list(PAPER_COLUMNS)
    extra = [c for c in ours.columns if c.startswith("wer_") and c != "wer_sd"]  # intervals and comparisons, where run
    columns[columns.index("wer_sd") + 1:columns.index("wer_sd") + 1] = extra
    if measured:
        at = {spec.config: measured.get((spec.upstream, spec.bits)) for spec in PAPER_ROWS}
        ours["measured_runtime"] = [(at.get(r) or (None, None))[0] for r in ours.paper_row]
        ours["measured_backend"] = [(at.get(r) or (None, None))[1] for r in ours.paper_row]
        columns[columns.index("est_runtime_full") + 1:columns.index("est_runtime_full") + 1] = ["measured_runtime", "measured_backend"]
    ref = paper_reference()[["paper_storage_mb", "paper_est_runtime", "paper_wer"]]
    table = ours.merge(ref, how="left", left_on="paper_row", right_index=True)
    return table.reindex(columns=columns)


def measured_runtimes(root: Path | None) -> dict[tuple[str, int], tuple[float, str]]:
    """(upstream, bits) -> (measured forward time over HuBERT Base's fp32, backend) from ``bench
    perf deploy --out STORE/deploy/UPSTREAM.json``: the fastest measured of the forms `deploy(auto)`
    times that keep the bit width's memory (int8 kernels at 8 bits, packed weights below) and of
    our ONNX exports on ONNX Runtime; 16 bits is the fp32 model on its fastest runtime (PyTorch
    or ONNX Runtime). Files with ONNX Runtime peers time HuBERT Base's fp32 on both runtimes and
    take the faster as the unit."""
    import json

    from upstream_quant.deploy import RUNTIMES, auto_backends

    from .results import RESULTS_DIR

    out = {}
    for path in sorted(Path(root or RESULTS_DIR).glob("deploy/*.json")):
        record = json.loads(path.read_text())
        # Times over HuBERT Base's fp32, as the paper's runtimes are (files written before that
        # column was recorded are HuBERT Base's own, whose fp32 is that reference). The table's
        # models quantize the transformer's linears: rows that quantize other layers too (all,
        # cnn8) are left out. Rows of another upstream timed alongside count for that upstream.
        by: dict[str, dict] = {}
        for r in record["rows"]:
            if r.get("layers") in (None, "transformer"):
                by.setdefault(r.get("upstream", record["upstream"]), {})[(r["bits"], r["backend"])] = (
                    r.get("measured_vs_reference", r["measured_runtime"]))
        for upstream, times in by.items():
            for bits in {b for b, _ in times}:
                forms = ("fp32", "ort-fp32") if bits == 16 else (*auto_backends(bits), *RUNTIMES)
                measured = [(times[(bits, b)], b) for b in forms if (bits, b) in times]
                if measured:
                    out[(upstream, bits)] = min(measured)
    return out


def _round(value, digits: int):
    return None if value is None or pd.isna(value) else round(float(value), digits)


def headline_columns(df: pd.DataFrame) -> set[str]:
    """The columns of each task's headline metric (``digits_wer``, ``intents_acc``; the paper
    table's ``wer``): the ones whose comparisons the markdown table shows."""
    from downstream.tasks import TASKS

    heads = {s.metrics[0] for s in TASKS.values()}
    return {c for c in df.columns if c in heads or any(c.endswith(f"_{h}") and "_vs_" not in c for h in heads)}


def markdown(df: pd.DataFrame) -> str:
    """The markdown table of a generated table (`display_table`'s cells)."""
    return _cells_markdown(display_table(df, headline_columns(df)))


def _cells_markdown(shown: pd.DataFrame) -> str:
    """Display cells as markdown, empty where missing."""
    return shown.astype(object).where(shown.notna(), None).to_markdown(index=False, missingval="") + "\n"


def write_table(df: pd.DataFrame, out_dir: Path, notes: str = "") -> tuple[Path, Path]:
    """table.md (display cells, with notes) and table.csv (every number), each written atomically."""
    md = markdown(df)
    if notes:
        md += "\n" + notes.strip() + "\n"
    return write_atomic(out_dir / "table.md", md), write_atomic(out_dir / "table.csv", df.to_csv(index=False))


PAPER_NOTES = """
Generated by `bench table paper` from {store}/paper/runs.jsonl; do not edit.
Columns without the `paper_` prefix are ours; `paper_*` are the figures published by Yeh et al.
(arXiv 2301.00652), read from bench/data/paper_reference.csv.
- paper_row: the paper's row; config: ours that corresponds to it (upstream / method+bits /
  protocol). Different methods are never averaged: each has its own line (only seeds of one
  configuration are, `seeds` of them, `wer_sd` their standard deviation). A paper row with no
  config of ours is costed from the released architecture, its WER empty.
- Which of ours is the paper's method: the paper trains its 1- and 2-bit models (its abstract
  names no method). `qat` (quantization-aware distillation from the full-precision model,
  label-free, then a head retrained on it) is our trained low-bit model, the one to compare with
  the paper's WER; `binary`/`uniform` (round-to-nearest) and `gptq` are post-training baselines.
  retrain: a head trained on that upstream (SUPERB's protocol, the paper's); reuse: the head of
  the full-precision upstream evaluated unchanged.
- storage_mb: decimal MB. HuBERT rows use our reconstruction of the paper's storage rule
  (transformer linears at b bits + an 8-bit scale per output row; CNN and feature projection at
  8 bits; positional conv at 16 bits; vectors at 32 bits); DistilHuBERT is its parameter count
  at 16 bits. stored_mb: what our packed format writes (b-bit codes, fp16 scales, rest fp16).
- est_runtime: bit-operation cost of the transformer encoder (b-bit weight MACs cost b/32,
  attention matmuls full precision) for a 10 s utterance, relative to HuBERT Base.
  est_runtime_full adds the CNN front end. The paper's DistilHuBERT 0.73 matches neither
  (its MAC ratio to HuBERT Base is about 0.48 with the CNN, 0.17 without).
- stored_mb: computed from the model that ran (its layers' bits, groups, zero-points);
  packed_mb: the size of its packed file on disk (stored_mb plus the file's JSON header).
- wer: test WER in percent of that configuration (mean over seeds ± their sd, and its 95 %
  bootstrap interval over test utterances and seeds); empty where it has not run. wer_vs_fp: the
  paired difference from the full-precision row of the same upstream, wer_vs_distilhubert from
  DistilHuBERT's, with its 95 % interval, "≈" where the interval holds 0 (not significant).
  LibriSpeech test-clean (2,620 utterances, 52,576 words) gives intervals of a few tenths of a
  point at these WERs; the synthetic corpora of the CPU suites give wider ones.
- measured_runtime (when STORE/deploy/UPSTREAM.json exists, from `bench perf deploy --out`): the
  forward time of the bit width's fastest deployed model (our kernels or our ONNX export on ONNX
  Runtime) over fp32 HuBERT Base's on its fastest runtime (PyTorch or ONNX Runtime, timed in the
  same rounds; the paper's unit for runtimes), measured on one machine with random weights (speed
  does not depend on them), one 10 s utterance; the fp rows are the fp32 model on its fastest
  runtime; measured_backend is the form (ort-fp32: ONNX Runtime). A measurement of this machine,
  not of the paper's.
"""


def metrics_legend() -> str:
    """``wer, cer: ASR; per: PR; ...`` from the registered tasks."""
    from downstream.tasks import TASKS

    return "; ".join(f"{', '.join(s.metrics)}: {s.title}" for s in TASKS.values())


def task_metrics(task: str) -> tuple[str, ...]:
    """A task's test metric columns (``test_wer``, ...), from its registered TaskSpec."""
    from downstream.tasks import TASKS

    spec = TASKS.get(task)
    return tuple(f"test_{m}" for m in spec.metrics) if spec is not None else ()


def _layers_differ(runs: pd.DataFrame, config: str):
    """Mixed-precision rows: how many layers' bit widths differ from the allocation made with the
    other calibration group(s) at the same budget, order, calibration and seed (the most, if
    several groups), per seed ("2/2/0" for three), so that two groups that produced the same model
    show 0 instead of hiding behind two rows."""
    mine = runs[(runs.config == config) & runs.bit_map.notna()]
    if mine.empty:
        return None
    per_seed = []
    for seed, row in mine.drop_duplicates("seed").sort_values("seed").set_index("seed").iterrows():
        others = runs[runs.bit_map.notna() & (runs.alloc_key == row.alloc_key) & (runs.calib_group != row.calib_group)
                      & (runs.seed == seed)]
        if not others.empty:
            per_seed.append(max(sum(row.bit_map.get(n) != b for n, b in other.items()) for other in others.bit_map))
    return "/".join(map(str, per_seed)) if per_seed else None


def reference_configs(config: str, configs: set[str], student: str | None) -> dict[str, str]:
    """What a configuration is compared with, by label: ``fp``, the full-precision row of its own
    upstream (retrain: the head its reuse rows evaluate), and the suite's ``student`` (the distilled
    model the headline compares low-bit models with) for the other upstreams' rows."""
    upstream = config.split("/", 1)[0]
    refs = {}
    fp = f"{upstream}/fp/retrain"
    if fp in configs and fp != config:
        refs["fp"] = fp
    if student is not None and upstream != student and f"{student}/fp/retrain" in configs:
        refs[student] = f"{student}/fp/retrain"
    return refs


def metric_cells(group: pd.DataFrame, metric: str, prefix: str, student: str | None = None,
                 resamples: int = DEFAULT_RESAMPLES) -> pd.DataFrame:
    """Per configuration of `group` (rows of one task and data): the mean over seeds, their
    standard deviation, the 95 % bootstrap interval (``_lo``/``_hi``), and the paired difference
    from each reference (``_vs_REF``, ``_vs_REF_lo``/``_hi``; ``_vs_REF_sig``: whether the
    interval leaves out 0). Rows without per-utterance scores get no interval."""
    from .stats import interval, paired, scores_by_config

    configs = list(dict.fromkeys(group.config))
    scores = scores_by_config(group, metric.removeprefix("test_"))
    out: dict[str, dict] = {}
    for c in configs:
        values = group[group.config == c][metric]
        cell = {prefix: round(values.mean(), 2), f"{prefix}_sd": _round(values.std(), 2)}
        cell |= {f"{prefix}_lo": None, f"{prefix}_hi": None}  # kept without scores: the cell says "n/a (rerun)"
        if scores[c] is not None:
            ci = interval(scores[c], resamples)
            cell |= {f"{prefix}_lo": round(ci.low, 2), f"{prefix}_hi": round(ci.high, 2)}
        for name, ref in reference_configs(c, set(configs), student).items():
            if scores[c] is None or scores[ref] is None:
                continue
            d = paired(scores[c], scores[ref], resamples)
            if d is not None:
                cell |= {f"{prefix}_vs_{name}": round(d.value, 2), f"{prefix}_vs_{name}_lo": round(d.low, 2),
                         f"{prefix}_vs_{name}_hi": round(d.high, 2), f"{prefix}_vs_{name}_sig": d.significant}
        out[c] = cell
    return pd.DataFrame.from_dict(out, orient="index")


def suite_table(suite: str, root: Path | None = None, student: str | None = None,
                resamples: int = DEFAULT_RESAMPLES) -> pd.DataFrame:
    """One row per config: cost columns, then for each (data, metric) the mean over seeds, its
    spread, its 95 % interval and its difference from the references (`metric_cells`), then the
    paper's figures where the config is one of the paper's (labelled ``paper_``)."""
    runs = runs_frame(suite, root)
    if runs.empty:
        return pd.DataFrame(columns=["config"])
    order = list(dict.fromkeys(runs.config))
    measured = [c for c in ("measured_runtime", "weights_mb_resident", "quantize_s") if c in runs]  # where recorded
    cost = runs.groupby("config")[["storage_mb", "stored_mb", "est_runtime", *measured]].first()
    parts = [cost]
    for (task, data), group in runs.groupby(["task", "data"], sort=False):
        for metric in task_metrics(task):
            if metric not in group:
                continue
            parts.append(metric_cells(group.dropna(subset=[metric]), metric, f"{data}_{metric.removeprefix('test_')}",
                                      student, resamples))
        seeds = f"{data}_seeds" if not any(f"{data}_seeds" == p.name for p in parts if isinstance(p, pd.Series)) else f"{data}_{task}_seeds"
        parts.append(group.groupby("config")["seed"].nunique().rename(seeds))
    table = pd.concat(parts, axis=1).reindex(order)
    score = superb_scores(runs)
    if not score.empty:
        table = table.join(score)
    if "bit_map" in runs:
        table.insert(len(cost.columns), "layers_differ", [_layers_differ(runs, c) for c in table.index])
    ref = paper_reference()
    keys = {row["config"]: paper_config(row) for row in runs.to_dict("records")}
    for col in ("paper_storage_mb", "paper_est_runtime", "paper_wer"):
        table[col] = [ref[col].get(keys.get(c)) if keys.get(c) in ref.index else None for c in table.index]
    bases = {c for c in table.columns if not table[c].isna().all()}
    table = table[[c for c in table.columns if c in bases or (c.endswith(("_lo", "_hi")) and c[:-3] in bases)]]
    return table.reset_index(names="config")


_STAT_SUFFIXES = ("_sd", "_lo", "_hi")


def display_table(df: pd.DataFrame, headline: set[str] | None = None) -> pd.DataFrame:
    """The markdown form of a table from `suite_table`/`paper_table`: each metric as one cell
    ``mean ± sd [lo, hi]`` (``n/a (rerun)`` for rows stored before per-utterance scores were kept),
    each comparison as ``+d [lo, hi]`` or ``≈ REF`` when its interval holds 0. Comparisons are
    shown for the `headline` metrics only (all are in table.csv)."""
    df = df.copy()
    cols = list(df.columns)
    bases = [c for c in cols if any(f"{c}{s}" in cols for s in _STAT_SUFFIXES) and not c.endswith(_STAT_SUFFIXES)
             and "_vs_" not in c]
    comparisons = [c for c in cols if "_vs_" in c and not c.endswith((*_STAT_SUFFIXES, "_sig"))]
    for base in bases:
        df[base] = [_cell(r.get(base), r.get(f"{base}_sd"), r.get(f"{base}_lo"), r.get(f"{base}_hi"))
                    for r in df.to_dict("records")]
    for comp in comparisons:
        name = comp.rsplit("_vs_", 1)[1]
        df[comp] = [_diff(r.get(comp), r.get(f"{comp}_lo"), r.get(f"{comp}_hi"), name) for r in df.to_dict("records")]
    drop = [c for c in cols if c.endswith(("_lo", "_hi", "_sig")) or (c.endswith("_sd") and c[:-3] in bases)]
    drop += [c for c in comparisons if headline is not None and c.rsplit("_vs_", 1)[0] not in headline]
    return df.drop(columns=drop)


def _cell(mean, sd, lo, hi) -> str | None:
    if mean is None or pd.isna(mean):
        return None
    text = f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None and not pd.isna(sd) else "")
    if lo is None or pd.isna(lo):
        return text + " n/a (rerun)"
    return text + f" [{lo:.2f}, {hi:.2f}]"


def _diff(value, lo, hi, name: str) -> str | None:
    if value is None or pd.isna(value):
        return None
    if lo <= 0 <= hi:
        return f"≈ {name} ({value:+.2f} [{lo:+.2f}, {hi:+.2f}])"
    return f"{value:+.2f} [{lo:+.2f}, {hi:+.2f}]"


SUITE_NOTES = """
Generated by `bench table {suite}` from {store}/{suite}/runs.jsonl; do not edit.
- config: upstream / quantization (fp = full precision; uniformB[-mse|-output], binary1, gptqB,
  gptqB-plain = GPTQ as first published, reconB = GPTQ + block reconstruction; -gN groups of N,
  -asym zero-points) / protocol
  (retrain: a head trained on this upstream's features, SUPERB's protocol; reuse: the head
  trained on the full-precision upstream, evaluated unchanged).
- storage_mb: the paper's storage rule (see the paper table); stored_mb: our packed file.
  est_runtime: bit-operation cost relative to full-precision HuBERT Base (10 s utterance).
- Rows `...@BACKEND` ran deployed (upstream_quant.deploy): measured_runtime is their measured
  forward time over the fp32 upstream's in the same process (one seeded 10 s input, median of 3,
  this machine); weights_mb_resident the bytes their quantized layers keep in memory.
- quantize_s: seconds the quantization took (calibration included; QAT: its start and training,
  where one process trained it all; this machine), for rows quantized since it was recorded.
- layers_differ (mixed precision): layers whose bit width differs from the allocation made at the
  same budget, order, scale search and seed with the other calibration group(s), per seed
  (a/b/c for three); 0: the same model.
- DATA_METRIC: the test metric of the task run on that data table, in percent (min_dcf: a
  normalised detection cost in [0, 1]) ({metrics}):
  mean over seeds ± their standard deviation (none with one seed) [95 % bootstrap interval,
  {resamples} resamples of the test utterances (ASV: of its trials) and of the seeds, seeded: the
  same store gives the same table]; "n/a (rerun)" for rows stored before per-utterance scores were kept.
- DATA_METRIC_vs_fp: the paired difference from the full-precision row of the same upstream
  (same test utterances; a reuse row and fp share their seeds' heads) with its 95 % interval;
  "≈ fp" where the interval holds 0: not distinguishable from full precision on this test set.
  _vs_STUDENT: the same against the suite's distilled student ({student}). Shown for each task's
  headline metric; table.csv has every metric's mean, sd, interval and differences.
- superb_score: SUPERB's score over the tasks the row has (superb_tasks): each task's headline
  metric scaled so that FBANK gives 0 and the best result 1000, averaged (bench/superb_score.py).
  "(measured)": the anchors are this suite's fbank row and its best full-precision row, not the
  published ones; a score over other tasks or anchors than SUPERB's is not SUPERB's published score.
- `paper_*` columns are the paper's figures, only for configs that match the paper's rows.
"""

# ---------------------------------------------------------------- README tables

_BLOCK = re.compile(r"(<!-- bench table (?P<suite>[\w./-]+) --store (?P<store>\S+)(?P<opts>(?: --(?:rows|columns) \S+)*) -->\n)"
                    r"(?P<body>.*?)(?P<end><!-- end table -->)", re.S)
# where `bench readme` regenerates tables: the README and every docs page
README_FILES = ("README.md", "docs/*.md")


def deploy_table(upstream: str, store: Path) -> pd.DataFrame:
    """The measurements of ``bench perf deploy --out STORE/deploy/UPSTREAM.json``, one row per
    configuration, beside the bit-operation estimate of the layers it quantizes."""
    import json

    from upstream_quant.select import FEATURE_GROUPS

    path = Path(store) / "deploy" / f"{upstream}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no deploy measurements (bench perf deploy --upstream {upstream} --out {path})")
    record = json.loads(path.read_text())
    alongside = any(r.get("upstream", record["upstream"]) != record["upstream"] for r in record["rows"])
    rows = []
    for r in record["rows"]:
        if "est_runtime" in r:  # the measured model's own (bench perf deploy records it)
            est = r["est_runtime"]
        else:
            groups = FEATURE_GROUPS if r.get("layers") == "all" else ("transformer",)
            est = cost_report(record["upstream"], r["bits"], record["seconds"], groups).est_runtime
        lo, hi = r["measured_range"]
        best = r.get("vs_best_fp32_range")
        rows.append({**({"model": r.get("upstream", record["upstream"])} if alongside else {}),
                     "bits": r["bits"], "backend": r["backend"], "layers": r.get("layers"),
                     "latency_s": round(r["latency_s"], 3),
                     "audio_s_per_s": round(record.get("batch", 1) * record["seconds"] / r["latency_s"], 1),
                     "measured_runtime": round(r["measured_runtime"], 2),
                     **({} if record["upstream"] == record.get("reference", record["upstream"])
                        else {f"vs_{record['reference']}": round(r["measured_vs_reference"], 2),
                              f"vs_{record['reference']}_range": "-".join(f"{v:.2f}" for v in r.get("vs_reference_range", []))}),
                     "range": f"{lo:.2f}-{hi:.2f}",
                     **({} if best is None else {"vs_best_fp32": round(r["measured_vs_best_fp32"], 2),
                                                 "vs_best_fp32_range": "-".join(f"{v:.2f}" for v in best)}),
                     "linears_mb_resident": None if r["linear_weights_mb"] is None else round(r["linear_weights_mb"], 2),
                     "ideal_mb": None if r["ideal_mb"] is None else round(r["ideal_mb"], 2),
                     "est_runtime": round(est["encoder"], 3), "est_runtime_full": round(est["full"], 3)})
    return pd.DataFrame(rows)


def table_markdown(suite: str, store: Path, rows: list[str] | None = None, columns: list[str] | None = None) -> str:
    """The markdown table `bench table SUITE --store STORE` writes, without its notes
    (``deploy/UPSTREAM``: the measurements of `bench perf deploy`); ``rows``: only the configs
    matching one of these globs, ``columns``: only these display columns, in this order (a
    trimmed table for the README)."""
    import fnmatch

    if suite.startswith("deploy/"):
        df = deploy_table(suite.removeprefix("deploy/"), store)
    else:
        df = paper_table(store) if suite == "paper" else suite_table(suite, store, suite_student(suite))
    if not rows and not columns:
        return markdown(df)
    # named columns are shown as named (a secondary metric's comparison too); otherwise the
    # comparisons of each task's headline metric only
    shown = display_table(df, None if columns else headline_columns(df))
    if rows:
        key = "config" if "config" in shown.columns else shown.columns[0]
        shown = shown[[any(fnmatch.fnmatchcase(str(c), pattern) for pattern in rows) for c in shown[key]]]
    if columns:
        unknown = [c for c in columns if c not in shown.columns]
        if unknown:
            raise ValueError(f"table {suite}: no column(s) {unknown}; it has {list(shown.columns)}")
        shown = shown[columns]
    return _cells_markdown(shown)


def suite_student(suite: str) -> str | None:
    """The suite file's ``student`` (None for a store whose suite file is not here)."""
    from .suites import SuiteError, load_suite

    try:
        return load_suite(suite).student
    except SuiteError:
        return None


def render_readme(text: str, root: Path = Path(".")) -> str:
    """`text` with every block between ``<!-- bench table SUITE --store STORE -->`` and
    ``<!-- end table -->`` replaced by that table generated from the store (`bench readme`):
    the README's tables are never typed by hand."""
    def table(m: re.Match) -> str:
        opts = dict(re.findall(r"--(rows|columns) (\S+)", m.group("opts") or ""))
        split = {k: v.split(",") for k, v in opts.items()}
        return m.group(1) + table_markdown(m.group("suite"), root / m.group("store"), split.get("rows"),
                                           split.get("columns")) + m.group("end")

    return _BLOCK.sub(table, text)


def readme_files(root: Path = Path(".")) -> list[Path]:
    """The files whose marked tables `bench readme` regenerates: README.md and docs/*.md."""
    out: list[Path] = []
    for pattern in README_FILES:
        out += sorted(Path(root).glob(pattern))
    return out

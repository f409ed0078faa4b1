"""Generated tables (pandas)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from upstream_quant.accounting import cost_report

from upstream_quant.io import write_atomic
from .reference import paper_reference
from .results import metric_by_config, paper_config, runs_frame


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
    "config", "storage_mb", "stored_mb", "est_runtime", "est_runtime_full", "wer",
    "paper_storage_mb", "paper_est_runtime", "paper_wer",
]


def paper_table(results_root: Path | None = None, seconds: float = 10.0) -> pd.DataFrame:
    """The 1-bit/2-bit comparison table: our accounting and WER beside the paper's figures."""
    ours_wer = metric_by_config("paper", "test_wer", results_root)
    rows = []
    for spec in PAPER_ROWS:
        report = cost_report(spec.upstream, spec.bits, seconds)
        rows.append({
            "config": spec.config,
            "storage_mb": round(report.storage_mb[spec.convention], 2),
            "stored_mb": round(report.storage_mb["stored"], 2),
            "est_runtime": round(report.est_runtime["encoder"], 3),
            "est_runtime_full": round(report.est_runtime["full"], 3),
            "wer": ours_wer.get(spec.config),
        })
    ours = pd.DataFrame(rows).set_index("config")
    ref = paper_reference()[["paper_storage_mb", "paper_est_runtime", "paper_wer"]]
    return ours.join(ref, how="left").reset_index()[PAPER_COLUMNS]


def write_table(df: pd.DataFrame, out_dir: Path, notes: str = "") -> tuple[Path, Path]:
    """table.md (with notes) and table.csv, each written atomically."""
    md = df.astype(object).where(df.notna(), None).to_markdown(index=False, missingval="") + "\n"
    if notes:
        md += "\n" + notes.strip() + "\n"
    return write_atomic(out_dir / "table.md", md), write_atomic(out_dir / "table.csv", df.to_csv(index=False))


PAPER_NOTES = """
Columns without the `paper_` prefix are ours; `paper_*` are the figures published by Yeh et al.
(arXiv 2301.00652), read from bench/data/paper_reference.csv.
- storage_mb: decimal MB. HuBERT rows use our reconstruction of the paper's storage rule
  (transformer linears at b bits + an 8-bit scale per output row; CNN and feature projection at
  8 bits; positional conv at 16 bits; vectors at 32 bits); DistilHuBERT is its parameter count
  at 16 bits. stored_mb: what our packed format writes (b-bit codes, fp16 scales, rest fp16).
- est_runtime: bit-operation cost of the transformer encoder (b-bit weight MACs cost b/32,
  attention matmuls full precision) for a 10 s utterance, relative to HuBERT Base.
  est_runtime_full adds the CNN front end. The paper's DistilHuBERT 0.73 matches neither
  (its MAC ratio to HuBERT Base is about 0.48 with the CNN, 0.17 without).
- wer: from results/paper/runs.jsonl when a run exists; empty otherwise.
"""


METRICS = {"asr": ("test_wer", "test_cer"), "ks": ("test_acc",)}


def suite_table(suite: str, root: Path | None = None) -> pd.DataFrame:
    """One row per config: cost columns, then mean and spread over seeds of each (data, metric),
    then the paper's figures where the config is one of the paper's (labelled ``paper_``)."""
    runs = runs_frame(suite, root)
    if runs.empty:
        return pd.DataFrame(columns=["config"])
    order = list(dict.fromkeys(runs.config))
    cost = runs.groupby("config")[["storage_mb", "stored_mb", "est_runtime"]].first()
    parts = [cost]
    for (task, data), group in runs.groupby(["task", "data"], sort=False):
        for metric in METRICS.get(task, ()):
            if metric not in group:
                continue
            stats = group.groupby("config")[metric].agg(["mean", "std", "count"])
            short = metric.removeprefix("test_")
            parts.append(pd.DataFrame({
                f"{data}_{short}": stats["mean"].round(2),
                f"{data}_{short}_sd": stats["std"].round(2),
            }))
        parts.append(group.groupby("config")["seed"].nunique().rename(f"{data}_seeds"))
    table = pd.concat(parts, axis=1).reindex(order)
    ref = paper_reference()
    keys = {row["config"]: paper_config(row) for row in runs.to_dict("records")}
    for col in ("paper_storage_mb", "paper_est_runtime", "paper_wer"):
        table[col] = [ref[col].get(keys.get(c)) if keys.get(c) in ref.index else None for c in table.index]
    table = table.dropna(axis=1, how="all")
    return table.reset_index(names="config")


SUITE_NOTES = """
Generated by `bench table {suite}` from {store}/{suite}/runs.jsonl; do not edit.
- config: upstream / quantization (fp = full precision; uniformB, binary1, gptqB) / protocol
  (retrain: a head trained on this upstream's features, SUPERB's protocol; reuse: the head
  trained on the full-precision upstream, evaluated unchanged).
- storage_mb: the paper's storage rule (see the paper table); stored_mb: our packed file.
  est_runtime: bit-operation cost relative to full-precision HuBERT Base (10 s utterance).
- DATA_wer / DATA_cer: corpus-level test WER / CER in percent (mean over seeds; _sd: standard
  deviation over seeds, empty with one seed). `paper_*` columns are the paper's figures, only for
  configs that match the paper's rows.
"""
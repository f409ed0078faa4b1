"""Generated plots (matplotlib): WER against storage, WER and runtime per bit width, layer weights."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .reference import paper_reference, paper_task  # noqa: E402
from .stats import interval, paired, scores_by_config  # noqa: E402


def _task(task: str):
    """The registered TaskSpec of a results row's task."""
    from downstream.tasks import get_task

    return get_task(task)


def _save(fig, path: Path) -> Path:
    import io

    from upstream_quant.io import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def pareto(points: pd.DataFrame, x: str, y: str, better=None) -> pd.DataFrame:
    """Rows not dominated by another: one with smaller-or-equal x and better y. ``better(a, b)``
    (index labels) says whether a's y is better than b's; by default smaller means better, and a
    caller with per-utterance scores passes "significantly smaller" (`significantly_lower`), so
    that a difference within the noise dominates nothing. The front is drawn through the means."""
    better = better or (lambda a, b: points.at[a, y] < points.at[b, y])
    keep = [i for i in points.index
            if not any(j != i and points.at[j, x] <= points.at[i, x] and better(j, i) for j in points.index)]
    return points.loc[keep].sort_values([x, y])


def significantly_lower(scores: dict, points: pd.DataFrame, y: str = "value"):
    """better(a, b) for `pareto` over `points` (a ``config`` column and `y`): the paired 95 %
    interval of a - b lies below 0; where either lacks per-utterance scores, plainly lower."""
    def better(a, b) -> bool:
        sa, sb = scores.get(points.at[a, "config"]), scores.get(points.at[b, "config"])
        if sa is None or sb is None:
            return points.at[a, y] < points.at[b, y]
        d = paired(sa, sb)
        return d is not None and d.high < 0

    return better


def plot_suite(rows: pd.DataFrame, out_dir: Path, student: str | None = None) -> list[Path]:
    """One PNG per (task, data) for the task's headline metric vs storage and per bit width, the
    SUPERB score against storage (where the suite has its anchors), and the featurizer weights."""
    written = []
    deployed = rows[rows["deploy"].notna()] if "deploy" in rows else rows.iloc[:0]
    if not deployed.empty:
        written += plot_deploy(deployed, out_dir)
        rows = rows[rows["deploy"].isna()]  # the other plots show each model once, on its reference path
    for (task, data), group in rows.groupby(["task", "data"]):
        spec = _task(task)
        metric_col = spec.headline
        g = group.dropna(subset=[metric_col]).groupby(["config", "upstream", "method", "bits", "protocol"], as_index=False,
                                                      dropna=False).agg(  # mixed precision has no single width
            value=(metric_col, "mean"), storage=("stored_mb", "mean"), runtime=("est_runtime", "mean"))
        if g.empty:
            continue
        scores = scores_by_config(group.dropna(subset=[metric_col]), spec.metrics[0])
        g["low"], g["high"] = zip(*[_interval(scores.get(c), v) for c, v in zip(g.config, g.value)])
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for protocol, marker in (("retrain", "o"), ("reuse", "s")):
            sub = g[g.protocol == protocol]
            ax.errorbar(sub.storage, sub.value, yerr=[sub.value - sub.low, sub.high - sub.value], fmt=marker, capsize=2,
                        label=f"ours ({protocol}, 95 % interval)")
            for _, r in sub.iterrows():
                quant = r.config.split("/")[1] if r.config.count("/") == 2 else r.method  # the label with its options (rot, g64, ...)
                ax.annotate(f"{r.upstream.replace('_tiny_en', '')} {quant}", (r.storage, r.value), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        if spec.mode == "min" and len(g) > 1:  # a front of low size and low error, dominance only where significant
            front = pareto(g, "storage", "value", significantly_lower(scores, g))
            ax.plot(front.storage, front.value, "k--", lw=0.8, label="Pareto front (ours; significant dominance)")
        ref = paper_reference().dropna(subset=["paper_storage_mb", "paper_wer"])
        if task == paper_task() and set(g.upstream) & {"hubert_base", "distilhubert"} and not ref.empty:
            ax.scatter(ref.paper_storage_mb, ref.paper_wer, marker="*", s=120, c="red", label="paper (Yeh et al.)")
        ax.set_xlabel("stored size (MB)")
        ax.set_ylabel(spec.axis_label)
        ax.set_title(f"{task} on {data}: quality against size")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / f"{task}_{data}_vs_storage.png"))

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for (upstream, method, protocol), sub in g[~g.method.isin(["fp", "mixed"])].groupby(["upstream", "method", "protocol"]):
            sub = sub.sort_values("bits")
            a1.errorbar(sub.bits, sub.value, yerr=[sub.value - sub.low, sub.high - sub.value], marker="o", capsize=2,
                        label=f"{upstream} {method} ({protocol})")
            a2.plot(sub.bits, sub.runtime, marker="o", label=f"{upstream} {method}")
        for _, r in g[g.method == "fp"].iterrows():
            a1.axhline(r.value, ls=":", lw=0.8, c="gray")
            a1.annotate(f"{r.upstream} fp ({r.protocol})", (1, r.value), fontsize=7)
        a1.set_xlabel("weight bits")
        a1.set_ylabel(spec.axis_label)
        a2.set_xlabel("weight bits")
        a2.set_ylabel("estimated runtime (rel. to HuBERT Base)")
        if a1.get_legend_handles_labels()[0]:  # a store with full-precision rows only has no curves to name
            a1.legend(fontsize=7)
        a1.grid(alpha=0.3)
        a2.grid(alpha=0.3)
        fig.suptitle(f"{task} on {data}: per bit width")
        written.append(_save(fig, out_dir / f"{task}_{data}_per_bits.png"))

    written += plot_superb_score(rows, out_dir, student)
    weights = rows.dropna(subset=["featurizer_weights"])
    weights = weights[weights.featurizer_weights.map(len) > 1].drop_duplicates("config")
    if not weights.empty:
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.35 * len(weights)))
        width = max(len(w) for w in weights.featurizer_weights)
        matrix = [list(w) + [float("nan")] * (width - len(w)) for w in weights.featurizer_weights]
        im = ax.imshow(matrix, aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(weights)), [f"{c} ({d})" for c, d in zip(weights.config, weights.data)], fontsize=7)
        ax.set_xticks(range(width), ["front end"] + [f"L{i}" for i in range(1, width)])
        fig.colorbar(im, ax=ax, label="softmax weight")
        ax.set_title("featurizer layer weights")
        written.append(_save(fig, out_dir / "featurizer_weights.png"))
    return written


def plot_superb_score(rows: pd.DataFrame, out_dir: Path, student: str | None = None) -> list[Path]:
    """SUPERB score against stored size, one point per upstream and quantization, the distilled
    ``student`` marked; each point names the tasks its score averages (fewer tasks: not comparable)."""
    from .superb_score import superb_scores

    score = superb_scores(rows)
    if score.empty:
        return []
    size = rows.groupby("config")["stored_mb"].first()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for config, r in score.iterrows():
        upstream = config.split("/")[0]
        is_student = upstream == student
        ax.scatter(size.get(config), r.superb_score, marker="D" if is_student else "o", s=60 if is_student else 30,
                   c="red" if is_student else "C0", label="distilled student" if is_student else None)
        tasks = r.superb_tasks.replace(" (measured)", "").replace(" (published)", "*")
        ax.annotate(f"{config.rsplit('/', 1)[0].replace('_tiny_en', '')} [{tasks}]", (size.get(config), r.superb_score),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("stored size (MB)")
    ax.set_ylabel("SUPERB score (FBANK 0, best 1000)")
    ax.set_title("SUPERB score against size (tasks in brackets; * published anchors)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return [_save(fig, out_dir / "superb_score_vs_storage.png")]


def _interval(scores, value: float) -> tuple[float, float]:
    """The 95 % interval of a config's metric; (value, value), no bar, without per-utterance scores."""
    if scores is None:
        return value, value
    ci = interval(scores)
    return ci.low, ci.high


def plot_deploy(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Deployed rows: estimated against measured runtime per bit width, and quality against the
    weight memory they keep resident (fp32 of the same layers for reference)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from upstream_quant.accounting import cost_report

    written = []
    for (task, data), group in rows.groupby(["task", "data"]):
        spec = _task(task)
        metric_col = spec.headline
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for upstream, sub in group.groupby("upstream"):
            sub = sub.assign(width=sub.bit_widths.map(lambda w: max(w) if len(w) else 16),
                             backend=sub.deploy.map(lambda d: d["backend"])).sort_values("width")
            est = sub.est_runtime / cost_report(upstream, 16).est_runtime["encoder"]
            a1.plot(sub.width, est, "o--", c="gray", label=f"{upstream}: estimated (bit-ops)")
            for backend, part in sub.groupby("backend"):
                a1.scatter(part.width, part.measured_runtime, marker="s", label=f"{upstream}: measured, {backend}")
                a2.scatter(part.weights_mb_resident, part[metric_col], label=f"{upstream} @{backend}")
            for _, r in sub.iterrows():
                a2.annotate(r.quant.split("@")[0], (r.weights_mb_resident, r[metric_col]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            a2.axvline(sub.weights_mb_resident_fp32.iloc[0], ls=":", c="gray", label=f"{upstream}: same layers in fp32")
        a1.axhline(1.0, ls=":", c="gray")
        a1.set_xlabel("weight bits")
        a1.set_ylabel("runtime relative to the fp32 model")
        a1.set_title("estimated vs measured on this machine", fontsize=9)
        a2.set_xlabel("resident weight memory of the quantized layers (MB, log)")
        a2.set_ylabel(spec.axis_label)
        a2.set_xscale("log")
        a2.xaxis.set_major_formatter(ScalarFormatter())
        a2.xaxis.set_minor_formatter(NullFormatter())
        for a in (a1, a2):
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
        fig.suptitle(f"{task} on {data}: deployed models")
        written.append(_save(fig, out_dir / f"{task}_{data}_deploy.png"))
    return written

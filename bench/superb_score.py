"""SUPERB score (SUPERB-SG, arXiv 2203.06849; the journal SUPERB, arXiv 2404.09385): each task's
headline metric linearly scaled so that FBANK scores 0 and the best result 1000, averaged over
the tasks a row has.

Anchors, per task and data table: the low anchor is FBANK's value, the high anchor the best
result. Published anchors (`bench/data/superb_reference.csv`, each with its source) apply to the
tasks' own corpora; where none is given for a data table (every synthetic corpus), the suite's
measured rows are the anchors: its ``fbank/fp/retrain`` row and its best full-precision row. A
row's ``superb_tasks`` says which tasks its score averages and which anchors each used: a score
over fewer tasks, or over measured anchors, is not the published SUPERB score.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

REFERENCE_FILE = "superb_reference.csv"
FBANK = "fbank/fp/retrain"


def published_anchors() -> pd.DataFrame:
    """(task, layout) -> fbank and sota values with their source; rows only where a paper gave them."""
    with resources.files("bench.data").joinpath(REFERENCE_FILE).open() as fh:
        df = pd.read_csv(fh, comment="#")
    missing = [c for c in ("task", "layout", "metric", "fbank", "sota", "source") if c not in df.columns]
    if missing:
        raise ValueError(f"bench/data/{REFERENCE_FILE}: missing column(s) {missing}")
    return df.set_index(["task", "layout"])


def _anchors(task: str, layout: str | None, values: pd.Series, mode: str, published: pd.DataFrame) -> tuple | None:
    """(low, high, what) for one (task, data) group, or None when it has no anchors."""
    if layout is not None and (task, layout) in published.index:
        ref = published.loc[(task, layout)]
        return float(ref.fbank), float(ref.sota), "published"
    fp = values[[c.split("/")[1] == "fp" for c in values.index]]
    if FBANK not in values.index or len(fp) < 2:
        return None
    best = fp.min() if mode == "min" else fp.max()
    return float(values[FBANK]), float(best), "measured"


def superb_scores(runs: pd.DataFrame) -> pd.DataFrame:
    """Per config: ``superb_score`` (mean over its tasks of 1000 x (value - low) / (high - low);
    a task with several data tables, as ER's folds, averages them first) and ``superb_tasks``.
    ``runs``: a results frame (`bench.results.runs_frame`), whose ``layout`` column names each
    row's data layout."""
    from downstream.tasks import TASKS

    published = published_anchors()
    per_task: dict[str, dict[str, list[float]]] = {}
    how: dict[str, dict[str, str]] = {}
    for (task, data), group in runs.groupby(["task", "data"], sort=False):
        spec = TASKS.get(task)
        if spec is None or spec.headline not in group:
            continue
        values = group.dropna(subset=[spec.headline]).groupby("config")[spec.headline].mean()
        layout = group["layout"].dropna().iloc[0] if "layout" in group and group["layout"].notna().any() else None
        anchors = _anchors(task, layout, values, spec.mode, published)
        if anchors is None or anchors[0] == anchors[1]:
            continue
        low, high, what = anchors
        for config, value in values.items():
            per_task.setdefault(config, {}).setdefault(task, []).append(1000 * (value - low) / (high - low))
            how.setdefault(config, {})[task] = what
    rows = []
    for config, tasks in per_task.items():
        scaled = [sum(v) / len(v) for v in tasks.values()]
        rows.append({"config": config, "superb_score": round(sum(scaled) / len(scaled), 1),
                     "superb_tasks": ", ".join(f"{t} ({how[config][t]})" for t in tasks)})
    return pd.DataFrame(rows, columns=["config", "superb_score", "superb_tasks"]).set_index("config")

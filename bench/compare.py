"""`bench compare STORE_A STORE_B`: whether two stores of one suite (another machine, another
thread count, another commit) agree cell by cell within their intervals.

Bit-identity across machines is not expected (floating-point order differs between CPUs and
thread counts, and a head's training drifts from there); agreement within the 95 % intervals is.
A cell agrees when the bootstrap interval of A - B holds 0: the same test utterances drawn for
both, each store's seeds drawn on their own (`bench.stats.paired` with ``pair_seeds=False``: seed
s trains another head on another machine once the floating-point order differs, so it is
another draw, not the same one).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .results import runs_frame
from .stats import DEFAULT_RESAMPLES, Scores, interval, paired
from .tables import task_metrics


def compare_stores(suite: str, store_a: Path, store_b: Path, resamples: int = DEFAULT_RESAMPLES) -> pd.DataFrame:
    """One row per (config, task, data, metric) both stores hold."""
    frames = {}
    for name, store in (("a", store_a), ("b", store_b)):
        frame = runs_frame(suite, Path(store))
        if frame.empty:
            raise FileNotFoundError(f"{Path(store) / suite / 'runs.jsonl'}: no finished runs of suite {suite!r}")
        frames[name] = frame
    a, b = frames["a"], frames["b"]
    cells = []
    keys = a[["config", "task", "data"]].drop_duplicates().merge(b[["config", "task", "data"]].drop_duplicates())
    for key in keys.to_dict("records"):
        rows = {n: f[(f.config == key["config"]) & (f.task == key["task"]) & (f.data == key["data"])] for n, f in frames.items()}
        for metric in task_metrics(key["task"]):
            if metric not in rows["a"] or metric not in rows["b"]:
                continue
            short = metric.removeprefix("test_")
            cell = dict(key, metric=short, a=round(rows["a"][metric].mean(), 3), b=round(rows["b"][metric].mean(), 3),
                        seeds_a=int(rows["a"].seed.nunique()), seeds_b=int(rows["b"].seed.nunique()))
            cell["identical"] = bool(sorted(rows["a"][metric]) == sorted(rows["b"][metric]))
            sa, sb = (Scores.from_rows(rows[n].to_dict("records"), short) for n in ("a", "b"))
            if sa is None or sb is None:
                cell["agree"] = None  # a row without per-utterance scores: rerun it
            else:
                ia, ib, d = interval(sa, resamples), interval(sb, resamples), paired(sa, sb, resamples, pair_seeds=False)
                cell |= {"a_lo": round(ia.low, 2), "a_hi": round(ia.high, 2), "b_lo": round(ib.low, 2),
                         "b_hi": round(ib.high, 2)}
                if d is None:
                    cell["agree"] = None  # tested on different utterances
                else:
                    cell |= {"diff": round(d.value, 3), "diff_lo": round(d.low, 2), "diff_hi": round(d.high, 2),
                             "agree": not d.significant}
            cells.append(cell)
    return pd.DataFrame(cells)


def format_comparison(cells: pd.DataFrame, suite: str, store_a, store_b) -> str:
    """The cells as a markdown table and a one-line verdict."""
    if cells.empty:
        return f"suite {suite}: the stores share no configuration"
    shown = cells.copy()
    shown["verdict"] = ["identical" if r.identical else "agrees" if r.agree else "n/a (rerun)" if r.agree is None
                        else "DIFFERS" for r in shown.itertuples()]
    cols = [c for c in ("config", "task", "data", "metric", "a", "a_lo", "a_hi", "b", "b_lo", "b_hi", "diff", "diff_lo",
                        "diff_hi", "verdict") if c in shown]
    md = shown[cols].astype(object).where(shown[cols].notna(), None).to_markdown(index=False, missingval="")
    n = len(shown)
    counts = shown.verdict.value_counts()
    summary = (f"suite {suite}: {store_a} vs {store_b}: {n} cells; {counts.get('identical', 0)} identical, "
               f"{counts.get('agrees', 0)} differ within their intervals, {counts.get('DIFFERS', 0)} differ beyond them, "
               f"{counts.get('n/a (rerun)', 0)} without per-utterance scores")
    return md + "\n\n" + summary


def config_difference(suite: str, store: Path, a: str, b: str, task: str, data: str, metric: str,
                      resamples: int = DEFAULT_RESAMPLES):
    """Config `a` minus config `b` of one store on one task, data and metric (paired bootstrap):
    what a sentence comparing two rows of a table rests on (the claims of the README and docs are tested with it)."""
    frame = runs_frame(suite, Path(store))
    rows = {c: frame[(frame.config == c) & (frame.task == task) & (frame.data == data)] for c in (a, b)}
    for c, r in rows.items():
        if r.empty:
            raise KeyError(f"{Path(store) / suite / 'runs.jsonl'}: no {task} rows of {c} on {data}")
    sa, sb = (Scores.from_rows(rows[c].to_dict("records"), metric) for c in (a, b))
    if sa is None or sb is None:
        raise ValueError(f"{a} or {b}: rows without per-utterance scores; rerun them")
    return paired(sa, sb, resamples)

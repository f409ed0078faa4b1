"""The papers' published figures: one data file, always labelled as the paper's."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

REFERENCE_FILE = "paper_reference.csv"
COLUMNS = ("storage_mb", "est_runtime", "wer")


def paper_reference() -> pd.DataFrame:
    """Rows of the paper's comparison table, indexed by config, columns prefixed `paper_`."""
    with resources.files("bench.data").joinpath(REFERENCE_FILE).open() as fh:
        df = pd.read_csv(fh)
    missing = [c for c in ("config", "task", *COLUMNS, "source") if c not in df.columns]
    if missing:
        raise ValueError(f"bench/data/{REFERENCE_FILE}: missing column(s) {missing}")
    return df.set_index("config").rename(columns={c: f"paper_{c}" for c in ("task", *COLUMNS, "source")})


@lru_cache(maxsize=1)  # read once: results.paper_config asks for every row of a store
def paper_task() -> str:
    """The task the paper's table reports (its rows' ``task``), which our rows are matched on."""
    tasks = set(paper_reference()["paper_task"])
    if len(tasks) != 1:
        raise ValueError(f"bench/data/{REFERENCE_FILE}: the comparison table's rows name several tasks {sorted(tasks)}")
    return tasks.pop()

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


def metric_by_config(suite: str, metric: str, root: Path | None = None) -> dict[str, float]:
    """Mean of `metric` over the finished runs of each table config in `suite`."""
    values: dict[str, list[float]] = {}
    for row in load_runs(suite, root):
        value = row.get("metrics", {}).get(metric)
        if row.get("config") and value is not None:
            values.setdefault(row["config"], []).append(float(value))
    return {config: sum(v) / len(v) for config, v in values.items()}

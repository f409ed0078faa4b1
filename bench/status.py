"""`bench status SUITE`: where each run of a suite stands, from the store's rows and the suite's
timeline (`bench.timeline`): finished (its headline metric), running (its last phase, on this
machine), interrupted (its last phase, checkpoint and the command that resumes it), failed (the
error), or not started; and the totals. Exit code 0 when every run is finished, 3 otherwise, so
scripts can wait on it."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from .results import load_runs
from .timeline import read_timeline

STATES = ("finished", "running", "interrupted", "failed", "not started")


@dataclass(frozen=True)
class RunStatus:
    name: str
    state: str
    detail: str = ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _where(event: dict) -> str:
    return event["event"] + (f" {event['epoch']}" if event.get("epoch") is not None else "")


def suite_status(suite, store: Path) -> list[RunStatus]:
    """One `RunStatus` per run of ``suite`` (a `bench.suites.Suite`) in ``store``, in suite order."""
    rows = {r.get("config_hash"): r for r in load_runs(suite.name, store)}
    work = Path(store) / suite.name / "work"
    last: dict[str, dict] = {}  # config hash -> its last event (a run under --set is another config)
    for event in read_timeline(work / "timeline.jsonl"):
        last[event.get("hash", "")] = event
    out = []
    for run in suite.runs:
        row = rows.get(run.config_hash)
        if row is not None:
            metrics = row.get("metrics") or {}
            headline = {k: v for k, v in metrics.items() if k.startswith("test_")} or metrics
            out.append(RunStatus(run.name, "finished", ", ".join(f"{k} {v}" for k, v in headline.items())))
            continue
        event = last.get(run.config_hash)
        if event is None:
            out.append(RunStatus(run.name, "not started"))
        elif event["event"] == "failed":
            out.append(RunStatus(run.name, "failed", f"{event.get('error', '')} (timeline: {work / 'timeline.jsonl'})"))
        elif event.get("host", platform.node()) == platform.node() and _alive(event["pid"]) and event["event"] != "interrupted":
            out.append(RunStatus(run.name, "running", f"at {_where(event)} (pid {event['pid']})"))
        else:
            ckpt = work / run.config_hash / "last.ckpt"
            detail = f"stopped at {_where(event)}"
            if ckpt.is_file():
                detail += f"; resumes from {ckpt}"
            out.append(RunStatus(run.name, "interrupted", detail + f"; resume: bench run {suite.path} --store {store}"))
    return out


def report(statuses: list[RunStatus], store_rows: list[dict]) -> str:
    """The lines `bench status` prints: one per run, then the counts and a rough time left."""
    width = max((len(s.name) for s in statuses), default=0)
    lines = [f"  [{s.state:<11}] {s.name:<{width}}  {s.detail}".rstrip() for s in statuses]
    counts = {state: sum(s.state == state for s in statuses) for state in STATES}
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items() if n) + f" of {len(statuses)}")
    walls = [r["wall_seconds"] for r in store_rows if r.get("wall_seconds")]
    left = len(statuses) - counts["finished"]
    if walls and left:
        lines.append(f"time left at the finished runs' mean ({sum(walls) / len(walls):.0f} s a run): "
                     f"about {left * sum(walls) / len(walls) / 60:.1f} min")
    return "\n".join(lines)

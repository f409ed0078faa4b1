"""`bench status SUITE`: where each run of a suite stands, from the store's rows and the suite's
timeline (`bench.timeline`): finished (its headline metric), running (its last phase, on this
machine), interrupted (its last phase, checkpoint and the command that resumes it), failed (the
error and its log file), or not started; and the totals. Runs launched with ``--launcher slurm``
add their job's state as ``sacct`` reports it (queued, running on another node, timed out).
Exit code 0 when every run is finished, 3 otherwise, so scripts can wait on it.

It also counts the stored rows a changed suite left behind (`superseded_rows`): a table averages
every row of a config, so an old row beside its rerun skews it; ``--prune`` moves them out of
the store into ``pruned.jsonl`` beside it."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from .results import append_rows, load_rows, load_runs, rows_text, runs_path, store_lock
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
    out = event["event"]
    if event.get("epoch") is not None:
        out += f" {event['epoch']}" + (f"/{event['max_epochs']}" if event.get("max_epochs") else "")
    if event.get("step") is not None:
        out += f", step {event['step']}" + (f"/{event['max_steps']}" if event.get("max_steps") else "")
    return out


def _time_left(events: list[dict]) -> str:
    """Training time left from the run's own pace: the epoch events of its current process."""
    epochs = [e for e in events if e["event"] == "epoch" and e.get("pid") == events[-1].get("pid")]
    if len(epochs) < 2 or epochs[-1]["t"] <= epochs[0]["t"]:
        return ""
    first, last = epochs[0], epochs[-1]
    for done, total in (("step", "max_steps"), ("epoch", "max_epochs")):
        if last.get(total) and last.get(done) is not None and last[done] > first.get(done, last[done]):
            pace = (last["t"] - first["t"]) / (last[done] - first[done])
            return f"; about {max(last[total] - last[done], 0) * pace / 60:.1f} min of training left"
    return ""


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Each SLURM job's state as ``sacct`` reports it (through submitit's watcher); empty when
    ``sacct`` is not on this machine."""
    import shutil

    if not job_ids or shutil.which("sacct") is None:
        return {}
    from submitit.slurm.slurm import SlurmInfoWatcher

    watcher = SlurmInfoWatcher(delay_s=0)
    for job_id in job_ids:
        watcher.register_job(str(job_id))
    watcher.update()
    return {str(j): watcher.get_state(str(j), mode="cache") for j in job_ids}




def suite_status(suite, store: Path) -> list[RunStatus]:
    """One `RunStatus` per run of ``suite`` (a `bench.suites.Suite`) in ``store``, in suite order."""
    from .launch import read_jobs

    rows = {r.get("config_hash"): r for r in load_runs(suite.name, store)}
    work = Path(store) / suite.name / "work"
    events: dict[str, list[dict]] = {}  # config hash -> its events (a run under --set is another config)
    for event in read_timeline(work / "timeline.jsonl"):
        events.setdefault(event.get("hash", ""), []).append(event)
    jobs = {h: j for h, j in read_jobs(Path(store) / suite.name / "jobs").items()
            if j.get("launcher") == "slurm" and h not in rows}
    states = slurm_states(sorted({j["job_id"] for j in jobs.values()}))
    resume = f"resume: bench run {suite.path} --store {store}"
    out = []
    for run in suite.runs:
        row = rows.get(run.config_hash)
        if row is not None:
            metrics = row.get("metrics") or {}
            headline = {k: v for k, v in metrics.items() if k.startswith("test_")} or metrics
            out.append(RunStatus(run.name, "finished", ", ".join(f"{k} {v}" for k, v in headline.items())))
            continue
        history = events.get(run.config_hash, [])
        event = history[-1] if history else None
        job = jobs.get(run.config_hash)
        slurm = states.get(job["job_id"], "UNKNOWN") if job else None
        job_note = f"slurm job {job['job_id']} {slurm}" if job else ""
        if job and slurm in ("PENDING", "REQUEUED", "CONFIGURING") and (event is None or event["event"] == "interrupted"):
            out.append(RunStatus(run.name, "not started", f"{job_note} (queued)"))
        elif event is None:
            out.append(RunStatus(run.name, "not started", job_note))
        elif event["event"] == "failed":
            where = f"log: {event['log']}" if event.get("log") else f"timeline: {work / 'timeline.jsonl'}"
            out.append(RunStatus(run.name, "failed", f"{event.get('error', '')} ({where})" + (f"; {job_note}" if job else "")))
        elif event["event"] != "interrupted" and (
                slurm in ("RUNNING", "COMPLETING") or
                (not job and event.get("host", platform.node()) == platform.node() and _alive(event["pid"]))):
            host = "" if event.get("host") == platform.node() else f" on {event.get('host')}"
            out.append(RunStatus(run.name, "running", f"at {_where(event)}{_time_left(history)} (pid {event['pid']}{host})"
                                 + (f"; {job_note}" if job else "")))
        else:
            ckpt = work / run.config_hash / "last.ckpt"
            detail = f"stopped at {_where(event)}" + (f" ({job_note})" if job else "")
            if event.get("host") not in (None, platform.node()) and not job:
                detail += f" on {event['host']} (running there, or stopped: this machine cannot tell)"
            if ckpt.is_file():
                detail += f"; resumes from {ckpt}"
            out.append(RunStatus(run.name, "interrupted", f"{detail}; {resume}"))
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


def superseded_rows(suite, rows: list[dict]) -> list[dict]:
    """Stored rows of a run the suite defines (the same name) under a config hash it no longer
    has, made without ``--set`` options, whose run has a row under its current hash: the rerun
    replaces them, and a table would average the two. Rows of runs the suite dropped, runs
    under ``--set``, and old rows of runs not yet rerun are not among them."""
    current = {run.name: run.config_hash for run in suite.runs}
    finished = {r.get("config_hash") for r in rows}
    return [r for r in rows if r.get("name") in current and r.get("config_hash") != current[r["name"]]
            and current[r["name"]] in finished and not (r.get("spec") or {}).get("options")]


def prune_superseded(suite, store: Path) -> tuple[int, Path]:
    """Move `superseded_rows` out of the suite's store into ``pruned.jsonl`` beside it, under the
    store's lock, each file written atomically, the archive first: a row is never only in memory.
    Returns how many moved and the archive's path."""
    from upstream_quant.io import write_atomic

    path = runs_path(suite.name, Path(store))
    archive = path.with_name("pruned.jsonl")
    with store_lock(path):
        rows = load_rows(path)
        gone = superseded_rows(suite, rows)
        if gone:
            ids = {id(r) for r in gone}
            append_rows(archive, gone)
            write_atomic(path, rows_text([r for r in rows if id(r) not in ids]))
    return len(gone), archive

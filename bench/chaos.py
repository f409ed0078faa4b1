"""Resume under fire: kill `bench run` with SIGKILL at points spread over a suite's own timeline,
resume, and check that every killed-and-resumed store holds the rows an uninterrupted run
wrote (metrics, per-utterance scores, dev curve, featurizer weights, steps, packed files).

Kill points come from the uninterrupted run's timeline (`bench.timeline`): "after event E of run
R (epoch k, its n-th such event), wait a fraction of the gap to the next event, then kill", so
they land in the same phase on a slower or faster machine. A killed process is watched through
its own events (its pid), and an event is named by what it belongs to, so a resumed process that
repeats an epoch repeats its names. `python -m bench.chaos SUITE.toml` prints one line per point.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .results import load_rows
from .timeline import read_timeline

ROOT = Path(__file__).resolve().parent.parent
COMPARED = ("metrics", "per_utterance", "dev_curve", "featurizer_weights")


@dataclass(frozen=True)
class KillPoint:
    name: tuple  # (run, event, epoch, n): the event after which the kill is timed
    delay: float  # seconds after it: a fraction of the uninterrupted run's gap to the next event
    phase: str  # what the process is doing then (the event's name)

    def describe(self) -> str:
        run, event, epoch, n = self.name
        where = f"{event}" + (f" {epoch}" if epoch is not None else "") + (f" #{n + 1}" if n else "")
        return f"{run.split('/')[1] if '/' in run else run}: {where} + {self.delay:.2f} s"


def event_names(events: list[dict]) -> list[tuple]:
    """Each event as (run, event, epoch, n): n counts earlier events of the same process with the
    same (run, event, epoch), so names repeat in a process that resumes an epoch."""
    seen: dict[tuple, int] = {}
    out = []
    for e in events:
        key = (e["pid"], e["run"], e["event"], e.get("epoch"))
        n = seen.get(key, 0)
        seen[key] = n + 1
        out.append((e["run"], e["event"], e.get("epoch"), n))
    return out


def plan(events: list[dict], count: int, fractions: tuple[float, ...] = (0.5, 0.1, 0.9)) -> list[KillPoint]:
    """``count`` kill points in timeline order: every kind of phase at least once (its first
    occurrence), then the points that split the longest remaining gaps; within a gap at
    ``fractions`` in turn."""
    names = event_names(events)
    # after "row_written" a run is over: the next run's start is the point to aim at
    gaps = [(i, events[i + 1]["t"] - events[i]["t"]) for i in range(len(events) - 1) if events[i]["event"] != "row_written"]
    chosen: list[int] = []
    for kind in dict.fromkeys(events[i]["event"] for i, _ in gaps):
        chosen.append(next(i for i, _ in gaps if events[i]["event"] == kind))
    for i, _ in sorted(gaps, key=lambda g: -g[1]):
        if len(chosen) >= count:
            break
        if i not in chosen:
            chosen.append(i)
    points = []
    for k, i in enumerate(sorted(chosen[:count])):
        gap = events[i + 1]["t"] - events[i]["t"]
        points.append(KillPoint(names[i], round(fractions[k % len(fractions)] * gap, 3), events[i]["event"]))
    return points


def command(suite: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "bench.cli", "run", str(suite), "--store", str(store), "--no-progress", "--device", "cpu"]


def run_to_end(suite: Path, store: Path, timeout: float = 600) -> None:
    done = subprocess.run(command(suite, store), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"bench run {suite} --store {store} failed:\n{done.stderr[-3000:]}")


def kill_at(suite: Path, store: Path, suite_name: str, point: KillPoint, timeout: float = 600) -> bool:
    """Start a run, SIGKILL it ``point.delay`` after it logs ``point.name``; False if it ended first."""
    timeline = store / suite_name / "work" / "timeline.jsonl"
    proc = subprocess.Popen(command(suite, store), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                return False
            mine = [e for e in read_timeline(timeline) if e["pid"] == proc.pid]
            if point.name in event_names(mine):
                time.sleep(point.delay)
                if proc.poll() is not None:
                    return False
                proc.send_signal(signal.SIGKILL)
                return True
            time.sleep(0.005)
        raise TimeoutError(f"{point.describe()} not reached in {timeout:.0f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def packed_digests(store: Path, suite_name: str) -> dict[str, str]:
    models = store / suite_name / "work" / "models"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(models.glob("*.safetensors"))}


def differences(reference: Path, other: Path, suite_name: str) -> list[str]:
    """What differs between two stores of one suite: rows (by config hash), their compared fields
    and training steps, and packed files; [] when they agree."""
    ref = {r["config_hash"]: r for r in load_rows(reference / suite_name / "runs.jsonl")}
    rows = load_rows(other / suite_name / "runs.jsonl")
    got = {r["config_hash"]: r for r in rows}
    out = [f"{len(rows)} rows for {len(got)} runs"] if len(rows) != len(got) else []
    out += [f"missing {h}" for h in ref if h not in got] + [f"extra {h}" for h in got if h not in ref]
    for h in ref.keys() & got.keys():
        for key in COMPARED:
            if ref[h].get(key) != got[h].get(key):
                out.append(f"{ref[h]['name']}: {key}")
        if (ref[h].get("train") or {}).get("steps") != (got[h].get("train") or {}).get("steps"):
            out.append(f"{ref[h]['name']}: steps")
    if packed_digests(reference, suite_name) != packed_digests(other, suite_name):
        out.append("packed files")
    return out


def main(argv: list[str] | None = None) -> int:
    from .suites import load_suite

    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("suite", type=Path)
    p.add_argument("--points", type=int, default=8)
    p.add_argument("--work", type=Path, default=Path("chaos"))
    args = p.parse_args(argv)
    name = load_suite(str(args.suite)).name
    shutil.rmtree(args.work, ignore_errors=True)
    reference = args.work / "uninterrupted"
    started = time.time()
    run_to_end(args.suite, reference)
    print(f"uninterrupted: {time.time() - started:.1f} s")
    points = plan(read_timeline(reference / name / "work" / "timeline.jsonl"), args.points)
    failures = 0
    for k, point in enumerate(points):
        store = args.work / f"kill{k}"
        killed = kill_at(args.suite, store, name, point)
        run_to_end(args.suite, store)
        diff = differences(reference, store, name)
        failures += bool(diff)
        print(f"{point.describe():<55} {'killed' if killed else 'ended first'}  "
              f"{'equal' if not diff else 'DIFFERS: ' + ', '.join(diff)}")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

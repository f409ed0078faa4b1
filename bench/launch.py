"""`bench run --launcher slurm|local`: one job per run through submitit (the scheduler library
fairseq and hydra use), results landing in the same store.

Each job is ``bench run SUITE --config-hash HASH`` with this invocation's overrides, so a job
is exactly a shard of one run: it resumes from the run's checkpoints if it was preempted and
appends its row under the store's lock. ``local`` runs the jobs as processes on this machine,
one after the other, waiting for each (what the tests use); ``slurm`` submits them and returns with their ids.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .results import load_runs
from .suites import RunSpec, Suite


def argv_tail(args: argparse.Namespace) -> list[str]:
    """The `bench run` arguments that reproduce this invocation (for the resume hint)."""
    out = [args.suite, "--store", str(args.store)]
    for flag, values in (("--data", args.data), ("--checkpoint", args.checkpoint), ("--set", args.set)):
        for value in values:
            out += [flag, value]
    if args.devices != 1:
        out += ["--devices", str(args.devices)]
    if getattr(args, "logger", "tensorboard") != "tensorboard":
        out += ["--logger", args.logger]
    for flag in ("only", "shard", "device"):
        if getattr(args, flag):
            out += [f"--{flag}", getattr(args, flag)]
    return out


def job_argv(args: argparse.Namespace, run: RunSpec) -> list[str]:
    """The `bench run` arguments of the job for one run."""
    tail = argv_tail(argparse.Namespace(**{**vars(args), "only": None, "shard": None}))
    return ["run", *tail, "--config-hash", run.config_hash, "--no-progress"]


def job_command(argv: list[str]):
    """What a job executes: the `bench` command itself in a fresh interpreter (submitit's
    CommandFunction raises with the command's output when it exits non-zero)."""
    from submitit.helpers import CommandFunction

    return CommandFunction([sys.executable, "-m", "bench.cli", *argv], verbose=False)


JOBS_INDEX = "index.jsonl"


def record_jobs(folder: Path, jobs: list[tuple[RunSpec, str]], launcher: str) -> None:
    """Which job runs which run (``STORE/SUITE/jobs/index.jsonl``, appended): `bench status` asks
    the scheduler about them."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / JOBS_INDEX, "a") as f:
        for run, job_id in jobs:
            f.write(json.dumps({"job_id": str(job_id), "hash": run.config_hash, "run": run.name, "launcher": launcher,
                                "submitted": round(time.time(), 1)}) + "\n")


def read_jobs(folder: Path) -> dict[str, dict]:
    """Config hash -> its latest job record."""
    out = {}
    path = folder / JOBS_INDEX
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[record["hash"]] = record
    return out


def launch(args: argparse.Namespace, suite: Suite, runs: list[RunSpec], store: Path) -> int:
    import submitit

    done = {r.get("config_hash") for r in load_runs(suite.name, store)}
    todo = [r for r in runs if args.force or r.config_hash not in done]
    if not todo:
        print(f"suite {suite.name}: all {len(runs)} run(s) already in the store")
        return 0
    folder = store / suite.name / "jobs"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=args.launcher)
    gpus = args.slurm_gpus if args.slurm_gpus is not None else args.devices
    params = {"timeout_min": int(args.slurm_hours * 60), "cpus_per_task": args.slurm_cpus, "name": f"bench-{suite.name}"}
    if args.launcher == "slurm":
        params |= {"slurm_gpus_per_node": gpus, "slurm_ntasks_per_node": args.devices}
        if args.slurm_partition:
            params["slurm_partition"] = args.slurm_partition
    executor.update_parameters(**params)
    if args.launcher == "slurm":
        jobs = [(run, executor.submit(job_command(job_argv(args, run)))) for run in todo]
        record_jobs(folder, [(run, job.job_id) for run, job in jobs], "slurm")
        print(f"suite {suite.name}: {len(jobs)} job(s) submitted (slurm), logs in {folder}")
        for run, job in jobs:
            print(f"  job {job.job_id}: {run.name}")
        print(f"rows land in {store / suite.name / 'runs.jsonl'}; `bench run {suite.name} --dry-run` shows what is done")
        return 0
    # local: one job at a time (runs on one machine would otherwise compete for it), waiting for each
    print(f"suite {suite.name}: {len(todo)} job(s) submitted (local), logs in {folder}")
    failed = 0
    for run in todo:
        job = executor.submit(job_command(job_argv(args, run)))
        record_jobs(folder, [(run, job.job_id)], "local")
        print(f"  job {job.job_id}: {run.name}", flush=True)
        try:
            job.result()
        except Exception as exc:  # submitit re-raises the job's error with its traceback
            failed += 1
            print(f"  FAILED {run.name}: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
    print(f"suite {suite.name}: {len(todo) - failed} job(s) finished, {failed} failed")
    return 1 if failed else 0

"""`bench status` on a real store holding a finished, an interrupted (SIGKILLed), a failed (a
corrupt audio file) and a not-started run."""

import json
import shutil
import subprocess
import sys
import time

import pytest

from bench.cli import main
from bench.suites import load_suite
from conftest import tiny_corpus

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent

SUITE = """name = "tiny"
[data.chirps]
layout = "librispeech"
root = "{good}"
train = ["train"]
dev = ["train"]
test = ["train"]

[data.broken]
layout = "librispeech"
root = "{bad}"
train = ["train"]
dev = ["train"]
test = ["train"]

[schedule.asr]
preset = "mini_asr"
proj = 16
hidden = 16
lstm_layers = 1
max_steps = 300
batch_size = 1
specaug = false

[[runs]]
upstreams = ["fbank"]
quant = ["fp"]
data = ["chirps"]
protocol = "retrain"
seeds = [0, 1, 2]

[[runs]]
upstreams = ["fbank"]
quant = ["fp"]
data = ["broken"]
protocol = "retrain"
"""


@pytest.mark.slow
def test_status_names_each_runs_state_and_how_to_resume(tmp_path, capsys):
    good = tiny_corpus(tmp_path / "good")
    bad = tmp_path / "bad" / "corpus"
    shutil.copytree(good, bad)
    for flac in bad.rglob("*.flac"):
        flac.write_bytes(b"not audio at all")
    suite_path = tmp_path / "tiny.toml"
    suite_path.write_text(SUITE.format(good=good, bad=bad))
    suite = load_suite(str(suite_path))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "bench.cli", "run", str(suite_path), "--store", str(store), "--no-progress", "--device", "cpu"]
    subprocess.run(cmd + ["--only", "*chirps/seed0"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    subprocess.run(cmd + ["--only", "*broken*"], cwd=ROOT, capture_output=True, timeout=300)  # fails, exits non-zero
    seed1 = next(r for r in suite.runs if r.name.endswith("chirps/seed1"))
    proc = subprocess.Popen(cmd + ["--only", "*chirps/seed1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = store / "tiny" / "work" / seed1.config_hash / "last.ckpt"
    deadline = time.time() + 120
    while not ckpt.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()

    assert main(["status", str(suite_path), "--store", str(store)]) == 3
    out = capsys.readouterr().out
    lines = {line.split("] ")[1].split()[0]: line for line in out.splitlines() if line.startswith("  [")}
    by_name = {r.name: r for r in suite.runs}
    states = {name: line[3:line.index("]")].strip() for name, line in lines.items()}
    assert states == {n: s for n, s in zip(by_name, ["finished", "interrupted", "not started", "failed"])}, out
    assert "test_wer" in lines["fbank/fp/retrain/asr-chirps/seed0"]
    interrupted = lines["fbank/fp/retrain/asr-chirps/seed1"]
    assert f"resumes from {ckpt}" in interrupted and f"resume: bench run {suite_path} --store {store}" in interrupted
    failed = lines["fbank/fp/retrain/asr-broken/seed0"]
    assert "Error" in failed, out
    broken = next(r for r in suite.runs if r.name.endswith("broken/seed0"))
    log = store / "tiny" / "work" / broken.config_hash / "run.log"
    assert f"(log: {log})" in failed and "Traceback" in log.read_text()  # the failed run's log keeps its traceback
    assert "1 finished, 1 interrupted, 1 failed, 1 not started of 4" in out
    rows = [json.loads(x) for x in (store / "tiny" / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == 1


def test_status_reads_slurm_job_states_and_estimates_time_left(tmp_path, monkeypatch, capsys):
    """Jobs from `--launcher slurm` (their index) and a fake ``sacct`` on PATH printing what
    SLURM prints: a queued job, a running one (on another node, its timeline has two epochs),
    and one that timed out."""
    from bench.launch import record_jobs
    from bench.status import suite_status
    from bench.timeline import Timeline

    suite_path = tmp_path / "tiny.toml"
    suite_path.write_text(SUITE.format(good=tmp_path / "g", bad=tmp_path / "b"))
    suite = load_suite(str(suite_path))
    store = tmp_path / "store"
    queued, running, timed_out, _ = suite.runs
    record_jobs(store / "tiny" / "jobs", [(queued, "101"), (running, "102"), (timed_out, "103")], "slurm")
    timeline = Timeline(store / "tiny" / "work" / "timeline.jsonl")
    for run, epochs in ((running, (0, 1, 2)), (timed_out, (0,))):
        timeline.run, timeline.config_hash = run.name, run.config_hash
        timeline.event("run")
        for epoch in epochs:
            timeline.event("epoch", epoch=epoch, step=10 * epoch, max_epochs=12, max_steps=None)
            time.sleep(0.05)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text("#!/bin/sh\necho 'JobID|State|NodeList'\necho '101|PENDING|None assigned'\n"
                                "echo '102|RUNNING|gpu7'\necho '102.batch|RUNNING|gpu7'\necho '103|TIMEOUT|gpu3'\n")
    (fake / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    statuses = {s.name: s for s in suite_status(suite, store)}
    assert statuses[queued.name].state == "not started" and "slurm job 101 PENDING (queued)" in statuses[queued.name].detail
    assert statuses[running.name].state == "running", statuses[running.name]
    assert "at epoch 2/12, step 20" in statuses[running.name].detail and "min of training left" in statuses[running.name].detail
    assert "slurm job 102 RUNNING" in statuses[running.name].detail
    assert statuses[timed_out.name].state == "interrupted" and "slurm job 103 TIMEOUT" in statuses[timed_out.name].detail
    assert f"resume: bench run {suite_path} --store {store}" in statuses[timed_out.name].detail
    monkeypatch.setenv("PATH", "/nonexistent")  # no sacct here: the jobs are reported as unknown, nothing breaks
    assert suite_status(suite, store)[1].state == "interrupted"


def test_status_prune_moves_rows_a_rerun_superseded_and_nothing_else(tmp_path, capsys):
    """A row of a run under an older config (another hash, the same name) beside its rerun is
    reported and, with ``--prune``, moved to ``pruned.jsonl``; the rerun's row, a run's old row
    with no rerun yet, a ``--set`` row and a row of a run the suite dropped stay."""
    suite_path = tmp_path / "tiny.toml"
    suite_path.write_text(SUITE.format(good=tmp_path / "good", bad=tmp_path / "bad"))
    suite = load_suite(str(suite_path))
    seed0, seed1 = suite.runs[0], suite.runs[1]
    rows = [{"name": seed0.name, "config_hash": seed0.config_hash, "spec": {"options": {}}, "metrics": {"test_wer": 1.0}},
            {"name": seed0.name, "config_hash": "old0", "spec": {"options": {}}, "metrics": {"test_wer": 9.0}},
            {"name": seed0.name, "config_hash": "set0", "spec": {"options": {"calibration": {"count": 8}}}, "metrics": {}},
            {"name": seed1.name, "config_hash": "old1", "spec": {"options": {}}, "metrics": {"test_wer": 2.0}},
            {"name": "fbank/fp/retrain/asr-gone/seed0", "config_hash": "gone", "spec": {"options": {}}, "metrics": {}}]
    runs = tmp_path / "store" / "tiny" / "runs.jsonl"
    runs.parent.mkdir(parents=True)
    runs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["status", str(suite_path), "--store", str(tmp_path / "store")]
    main(args)
    assert "1 stored row(s) superseded by their rerun" in capsys.readouterr().out
    assert len(runs.read_text().splitlines()) == 5  # reported, not touched
    main(args + ["--prune"])
    out = capsys.readouterr().out
    assert "moved 1 superseded row(s)" in out and "superseded by their rerun" not in out
    assert [json.loads(x)["config_hash"] for x in runs.read_text().splitlines()] == [seed0.config_hash, "set0", "old1", "gone"]
    pruned = runs.with_name("pruned.jsonl")
    assert [json.loads(x)["config_hash"] for x in pruned.read_text().splitlines()] == ["old0"]
    main(args + ["--prune"])  # nothing left to move; the archive keeps what it holds
    assert "moved 0 superseded row(s)" in capsys.readouterr().out and len(pruned.read_text().splitlines()) == 1

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
    assert "Error" in lines["fbank/fp/retrain/asr-broken/seed0"], out
    assert "1 finished, 1 interrupted, 1 failed, 1 not started of 4" in out
    rows = [json.loads(x) for x in (store / "tiny" / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == 1

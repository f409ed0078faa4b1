"""DDP that has run: two CPU processes (gloo) train the ASR and KS heads, each rank on its own
batches; `bench run --devices 2` writes each row once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import tiny_corpus
from test_paper_path import TINY

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


def chirps(root: Path, n: int = 8) -> Path:
    d = root / "train" / "1" / "1"
    d.mkdir(parents=True)
    t = np.arange(8000) / 16000
    words = ["GO", "STOP", "UP", "DOWN", "LEFT", "RIGHT", "ON", "OFF"]
    lines = []
    for i in range(n):
        sf.write(d / f"1-1-{i:04d}.flac", (0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t)).astype(np.float32), 16000)
        lines.append(f"1-1-{i:04d} {words[i % len(words)]}\n")
    (d / "1-1.trans.txt").write_text("".join(lines))
    return root


def keywords(root: Path) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    dev, test = [], []
    for j, word in enumerate(["yes", "no", "up", "down"]):
        (root / word).mkdir(parents=True)
        for k in range(6):
            sf.write(root / word / f"spk{k}_nohash_0.wav", (0.3 * np.sin(2 * np.pi * (300 + 200 * j) * t)).astype(np.float32), 16000)
            (dev if k == 4 else test if k == 5 else []).append(f"{word}/spk{k}_nohash_0.wav")
    (root / "_background_noise_").mkdir()
    sf.write(root / "_background_noise_" / "noise.wav", (0.05 * rng.standard_normal(16000 * 20)).astype(np.float32), 16000)
    (root / "validation_list.txt").write_text("\n".join(dev) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("task", ["asr", "ks"])
def test_ddp_ranks_train_on_different_batches(tmp_path, task):
    root = chirps(tmp_path / "asr") if task == "asr" else keywords(tmp_path / "sc")
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, str(HERE / "ddp_probe.py"), task, str(root), str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"{task}-rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 0  # lockstep: the same number of steps
    seen = [{u for batch in r for u in batch} for r in ranks]
    assert ranks[0] != ranks[1] and all(seen)
    if task == "asr":  # length-bucketed batches are partitioned: no utterance on both ranks in an epoch
        first_epoch = [{u for batch in r[: len(r) // 2 or 1] for u in batch} for r in ranks]
        assert first_epoch[0].isdisjoint(first_epoch[1])
    results = [json.loads((tmp_path / f"{task}-result-rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]  # both ranks report the same tested head


@pytest.mark.slow
def test_bench_run_with_two_devices_writes_each_row_once(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY.format(root=tiny_corpus(tmp_path)).replace("max_steps = 4000", "max_steps = 4"))
    store = tmp_path / "store"
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(suite), "--store", str(store), "--devices", "2",
                           "--device", "cpu", "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in (store / "tiny" / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["devices"] == 2 and rows[0]["spec"]["devices"] == 2

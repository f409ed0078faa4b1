"""The GPU-box paper path, end to end on CPU: the committed `paper` suite on a LibriSpeech-shaped
synthetic corpus, with HuBERT and DistilHuBERT checkpoints in the formats users have (fairseq
`.pt`, s3prl's Distiller `.ckpt`, random weights), overridden from the command line only.

PAPER_SMOKE_SIZE=full uses the released architectures (94.7 M and 23.5 M parameters: minutes);
the default uses the same families at toy width, so the whole path runs in CI.
"""

import json
import os
import pickle
import struct
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SIZE = os.environ.get("PAPER_SMOKE_SIZE", "small")


class Dictionary:
    """Pickled under fairseq's own module path, as real fairseq checkpoints do."""

    def __init__(self, symbols):
        self.symbols = symbols


Dictionary.__module__ = "fairseq.data.dictionary"


def write_fairseq_hubert(path: Path) -> None:
    """A HuBERT checkpoint as fairseq writes it (cfg/model/task_state with a pickled Dictionary)."""
    from upstream_quant.upstreams.hubert import _build, build_hubert_base

    from conftest import TINY_HUBERT

    torch.manual_seed(0)
    model = build_hubert_base() if SIZE == "full" else _build(TINY_HUBERT["model_cfg"], TINY_HUBERT["task_cfg"],
                                                             [list("abcdefgh")], "hubert_base")
    state = model.s3prl_state()
    modules = {name: types.ModuleType(name) for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary")}
    modules["fairseq.data.dictionary"].Dictionary = Dictionary
    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        torch.save({"cfg": {"model": state["model_cfg"], "task": state["task_cfg"]}, "model": state["model_weight"],
                    "task_state": {"dictionaries": [Dictionary(s) for s in state["dictionaries_symbols"]]}},
                   path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write_s3prl_distilhubert(path: Path) -> None:
    from upstream_quant.upstreams.distiller import build_distilhubert, build_distiller

    from conftest import TINY_DISTILLER

    torch.manual_seed(0)
    model = build_distilhubert() if SIZE == "full" else build_distiller(TINY_DISTILLER, "distilhubert")
    torch.save(model.s3prl_state(), path)


def bench(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def smoke_overrides(tmp: Path) -> list[str]:
    return ["--data", f"librispeech={tmp / 'synth' / 'digits'}",
            "--checkpoint", f"hubert_base={tmp / 'hubert_base_ls960.pt'}",
            "--checkpoint", f"distilhubert={tmp / 'distilhubert.ckpt'}",
            "--set", "asr.max_steps=6", "--set", "asr.batch_size=4", "--set", "asr.proj=32", "--set", "asr.hidden=32",
            "--set", "asr.lstm_layers=1", "--set", "asr.lr=1e-3",
            "--set", "qat.steps=2", "--set", "qat.batch_size=2", "--set", "qat.crop_seconds=1",
            "--set", "calibration.count=4", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper-smoke")
    made = bench("data", "synth", "--out", str(tmp / "synth"), "--kind", "digits", "--minutes", "1.5",
                 "--split-names", "librispeech", "--heldout-voice", "none")
    assert made.returncode == 0, made.stderr
    write_fairseq_hubert(tmp / "hubert_base_ls960.pt")
    write_s3prl_distilhubert(tmp / "distilhubert.ckpt")
    store = tmp / "store"
    ran = bench("run", "paper", "--store", str(store), *smoke_overrides(tmp))
    return tmp, store, ran


@pytest.mark.slow
def test_paper_suite_runs_end_to_end_and_its_table_is_complete(smoke):
    tmp, store, ran = smoke
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    from bench.suites import load_suite

    rows = [json.loads(line) for line in (store / "paper" / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == len(load_suite("paper").runs) == len({r["config_hash"] for r in rows})
    for row in rows:
        assert row["checkpoint"] and row["checkpoint"].endswith((".pt", ".ckpt")), row["name"]
        assert row["spec"]["data_config"]["root"] == "digits"  # where it lay: only its name (rows are portable)
        if row["method"] != "fp":
            packed = store / row["packed_file"]  # relative to the store
            size = packed.stat().st_size
            header = struct.unpack("<Q", packed.read_bytes()[:8])[0]
            assert abs(row["packed_mb"] * 1e6 - size) < 1e3
            # stored_mb is computed from the model; the file adds only its JSON header
            assert round((size - 8 - header) / 1e6, 3) == row["stored_mb"], row["name"]
            if SIZE == "full":
                assert abs(row["stored_mb"] - row["packed_mb"]) <= 0.01 * row["packed_mb"]
    distil = next(r for r in rows if r["upstream"] == "distilhubert")
    states = len(distil["featurizer_weights"])
    layers = 1 if SIZE != "full" else 2  # DistilHuBERT: front end, layers, 3 (toy: 2) prediction heads
    assert distil["featurizer_weights"][layers] == 1.0 and states > layers + 1

    table = bench("table", "paper", "--store", str(store), "--json")
    assert table.returncode == 0, table.stderr
    lines = json.loads(table.stdout)
    assert {r["paper_row"] for r in lines} == {"hubert_base/fp16", "hubert_base/8bit", "hubert_base/4bit",
                                                "hubert_base/2bit", "hubert_base/1bit", "distilhubert/fp16"}
    assert all(r["wer"] is not None and r["config"] for r in lines), [r for r in lines if r["wer"] is None]
    assert all(r["seeds"] == 1 for r in lines)  # one model per line: nothing averaged across methods
    assert all(r["wer_lo"] <= r["wer_hi"] for r in lines)  # every WER with its interval (per-utterance scores kept)
    # the headline: each HuBERT line against DistilHuBERT's, each quantized one against full precision
    hubert = [r for r in lines if r["config"].startswith("hubert_base/")]
    assert all(r["wer_vs_distilhubert_lo"] <= r["wer_vs_distilhubert_hi"] for r in hubert)
    assert all(r["wer_vs_fp"] is not None for r in hubert if r["method"] != "fp")
    two = [r["config"] for r in lines if r["paper_row"] == "hubert_base/2bit"]
    assert two == ["hubert_base/qat2-s20000/retrain", "hubert_base/uniform2/retrain", "hubert_base/uniform2/reuse",
                   "hubert_base/gptq2/reuse"]
    for r in lines:
        if r["method"] != "fp":
            assert abs(r["stored_mb"] - r["packed_mb"]) <= max(0.01 * r["packed_mb"], 0.05)
    print(table.stdout)

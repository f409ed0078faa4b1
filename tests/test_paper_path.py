"""Pieces of the paper path: cost from the model that ran, the store's lock, overrides and their
errors, streamed unlabelled audio, sharded KS sampling, interrupts."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bench.suites import Overrides, SuiteError, load_suite
from upstream_quant.accounting import model_cost, stored_bytes
from upstream_quant.methods.binary import BinaryConfig
from upstream_quant.methods.mixed import MixedPrecisionConfig
from upstream_quant.packed import save_packed
from upstream_quant.quantize import quantize, target_layers
from upstream_quant.methods.uniform import UniformConfig

from conftest import tiny_corpus, tiny_suite_toml

ROOT = Path(__file__).resolve().parent.parent


def payload_bytes(path: Path) -> int:
    raw = path.read_bytes()
    return len(raw) - 8 - int.from_bytes(raw[:8], "little")


@pytest.mark.parametrize("config", [
    None, BinaryConfig(), UniformConfig(bits=4, group_size=8), UniformConfig(bits=3, symmetric=False, group_size=16),
    UniformConfig(bits=2, act_bits=8, targets=("*",)),
])
def test_stored_size_is_computed_from_the_model_and_equals_the_packed_payload(tiny_hubert, tmp_path, config):
    model = tiny_hubert if config is None else quantize(tiny_hubert, config, progress=False)
    path = save_packed(model, tmp_path / "m.safetensors")
    assert stored_bytes(model) == payload_bytes(path)
    cost = model_cost(model)
    assert cost.storage_mb["stored"] == payload_bytes(path) / 1e6
    assert set(cost.bit_map.values()) == (set() if config is None else {config.bits})


def test_mixed_precision_cost_has_per_layer_widths_and_runtime(tiny_hubert, tmp_path):
    layers = sorted(target_layers(tiny_hubert, ("transformer",)))
    bits = {n: (2 if i % 2 else 4) for i, n in enumerate(layers)}
    mixed = quantize(tiny_hubert, MixedPrecisionConfig(bit_map=tuple(bits.items())), progress=False)
    cost = model_cost(mixed)
    assert cost.bit_map == bits and cost.as_row()["bit_widths"] == [2, 4]
    assert stored_bytes(mixed) == payload_bytes(save_packed(mixed, tmp_path / "m.safetensors"))
    two, four = (model_cost(quantize(tiny_hubert, UniformConfig(bits=b), progress=False)) for b in (2, 4))
    assert two.est_runtime["encoder"] < cost.est_runtime["encoder"] < four.est_runtime["encoder"]
    assert two.storage_mb["paper"] < cost.storage_mb["paper"] < four.storage_mb["paper"]


def test_activation_bits_lower_the_estimated_runtime(tiny_hubert):
    plain = model_cost(quantize(tiny_hubert, UniformConfig(bits=4), progress=False))
    act = model_cost(quantize(tiny_hubert, UniformConfig(bits=4, act_bits=8), progress=False))
    assert act.act_bits and act.est_runtime["encoder"] < plain.est_runtime["encoder"]
    assert act.storage_mb == plain.storage_mb


def test_mixed_size_model_agrees_with_the_packed_file(tiny_hubert, tmp_path):
    from upstream_quant.methods.mixed import coverage, size_model

    layers = coverage(tiny_hubert, "transformer")
    sizes = size_model(tiny_hubert, layers)
    bits = {n: 3 for n in layers}
    model = quantize(tiny_hubert, MixedPrecisionConfig(bit_map=tuple(bits.items())), progress=False)
    assert sizes.total_mb(bits) * 1e6 == payload_bytes(save_packed(model, tmp_path / "m.safetensors"))


# ---------------------------------------------------------------- store


WRITER = """
import sys
from pathlib import Path
from bench.results import append_rows
path, who = Path(sys.argv[1]), sys.argv[2]
for i in range(200):
    append_rows(path, [{"writer": who, "i": i, "config_hash": f"{who}-{i}"}])
"""


@pytest.mark.slow
def test_two_writers_lose_no_rows(tmp_path):
    path = tmp_path / "suite" / "runs.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), who], cwd=ROOT) for who in "ab"]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 400 and {(r["writer"], r["i"]) for r in rows} == {(w, i) for w in "ab" for i in range(200)}


# ---------------------------------------------------------------- overrides


@pytest.fixture
def libri(tmp_path):
    root = tmp_path / "LibriSpeech"
    for split in ("train-clean-100", "dev-clean", "test-clean"):
        (root / split).mkdir(parents=True)
    ckpt = tmp_path / "hubert.pt"
    ckpt.write_bytes(b"not yet read")
    return root, ckpt


def test_overrides_change_roots_checkpoints_and_schedules(libri):
    root, ckpt = libri
    base = load_suite("paper")
    suite = load_suite("paper", Overrides.parse([f"librispeech={root}"], [f"hubert_base={ckpt}"],
                                                ["asr.max_steps=20", "asr.lr=1e-3", "qat.steps=3", "calibration.count=4"]))
    run = next(r for r in suite.runs if r.upstream == "hubert_base" and r.quant.method == "qat")
    assert run.data_config["root"] == str(root) and run.checkpoint == str(ckpt)
    assert run.schedule["max_steps"] == 20 and run.schedule["lr"] == 1e-3 and run.options == {"qat": {"steps": 3}}
    gptq = next(r for r in suite.runs if r.quant.method == "gptq")
    assert gptq.options == {"calibration": {"count": 4}}
    distil = next(r for r in suite.runs if r.upstream == "distilhubert")
    assert distil.checkpoint is None and distil.schedule["layer"] == "last_transformer"
    # a data root is where data is, not what it is: same hash; settings and weights change it
    moved = load_suite("paper", Overrides.parse([f"librispeech={root}"]))
    assert [r.config_hash for r in moved.runs] == [r.config_hash for r in base.runs]
    assert {r.config_hash for r in suite.runs}.isdisjoint(r.config_hash for r in base.runs)


@pytest.mark.parametrize("kwargs, message", [
    ({"data": ["nowhere=/tmp"]}, "no data table 'nowhere'"),
    ({"data": ["librispeech=/no/such/folder"]}, "no such folder"),
    ({"checkpoints": ["hubert_base=/no/such.pt"]}, "no such file"),
    ({"checkpoints": ["wav2vec2=/tmp"]}, "runs no upstream 'wav2vec2'"),
    ({"settings": ["asr.max_stepz=3"]}, "asr.max_stepz: unknown field"),
    ({"settings": ["asr.max_steps=fast"]}, "expected <class 'int'>"),
    ({"settings": ["asr.lr=true"]}, "expected <class 'float'>"),
    ({"settings": ["ks.lr=1"]}, "no task 'ks'"),
    ({"settings": ["qat.epochs=1"]}, "qat.epochs: unknown field"),
    ({"settings": ["qat.steps=-1"]}, "positive number"),
    ({"settings": ["max_steps=3"]}, "SECTION.FIELD=VALUE"),
    ({"data": ["librispeech"]}, "NAME=VALUE"),
])
def test_bad_overrides_are_one_line_errors(libri, kwargs, message):
    with pytest.raises(SuiteError, match=message):
        load_suite("paper", Overrides.parse(**kwargs))


def test_speech_commands_root_and_test_root_are_overridden(tmp_path):
    (tmp_path / "sc").mkdir()
    (tmp_path / "sc_test").mkdir()
    suite = load_suite("paper-ks", Overrides.parse([f"speech_commands={tmp_path / 'sc'}",
                                                   f"speech_commands.test_root={tmp_path / 'sc_test'}"]))
    assert {(r.data_config["root"], r.data_config["test_root"]) for r in suite.runs} == {(str(tmp_path / "sc"), str(tmp_path / "sc_test"))}
    assert suite.data_tables["speech_commands"]["test_root"] == str(tmp_path / "sc_test")
    with pytest.raises(SuiteError, match="NAME.test_root=PATH"):
        load_suite("paper-ks", Overrides.parse([f"speech_commands.dev={tmp_path}"]))


def test_a_data_root_without_the_splits_names_what_it_holds(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(SuiteError, match=r"split folder\(s\) \['train-clean-100', 'dev-clean', 'test-clean'\] not found; it holds \['train'\]"):
        load_suite("paper", Overrides.parse([f"librispeech={tmp_path}"]))


def test_devices_beyond_the_machine_are_refused():
    from bench.cli import check_devices

    with pytest.raises(ValueError, match="--devices 4096"):
        check_devices(4096, None)


def test_a_checkpoint_of_the_wrong_family_is_a_clear_error(tiny_distiller, tmp_path):
    from upstream_quant.checkpoints import CheckpointError
    from upstream_quant.loading import load_upstream

    path = tmp_path / "distil.ckpt"
    torch.save(tiny_distiller.s3prl_state(), path)
    with pytest.raises(CheckpointError, match="neither an s3prl-converted HuBERT checkpoint"):
        load_upstream("hubert_base", checkpoint=path)


# ---------------------------------------------------------------- streamed audio, sampling


def test_streamed_crops_read_only_their_window_and_hours_are_capped(tmp_path):
    from upstream_quant.distill import CropDataset, cap_hours, file_durations

    files = []
    for i in range(6):
        path = tmp_path / f"{i}.flac"
        sf.write(path, (np.arange(16000 * (i + 1)) % 1000 / 1000).astype(np.float32), 16000)
        files.append(str(path))
    crops = CropDataset(files, 8000, seed=0)
    assert all(crops[i].numel() == 8000 for i in range(6))
    again = CropDataset(files, 8000, seed=0)
    assert all(torch.equal(crops[i], again[i]) for i in range(6))
    whole = sf.read(files[5], dtype="float32")[0]
    start = int(round(float(crops[5][0]) * 1000))
    np.testing.assert_allclose(crops[5].numpy(), whole[start : start + 8000], atol=1e-4)
    durations = file_durations(files)
    assert [d for _, d in durations] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    kept = cap_hours(durations, 8 / 3600, seed=0)
    assert 0 < sum(dict(durations)[f] for f in kept) <= 8 and kept == sorted(kept)
    assert cap_hours(durations, None, 0) == files


def test_balanced_sampler_shards_across_ranks():
    from downstream.batching import BalancedSampler

    labels = ["a"] * 30 + ["b"] * 10 + ["c"] * 5
    whole = list(BalancedSampler(labels, seed=3))
    shards = [list(BalancedSampler(labels, seed=3, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(labels) // 2
    assert shards[0] == whole[0:44:2] and shards[1] == whole[1:44:2] and shards[0] != shards[1]


# ---------------------------------------------------------------- interrupts

TINY = tiny_suite_toml("{root}", """
[[runs]]
upstreams = ["fbank"]
quant = ["fp"]
data = ["chirps"]
""", max_steps=4000, cache_features=False)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_suite_exits_non_zero_naming_the_run_and_the_resume_command(tmp_path, signum):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY.format(root=tiny_corpus(tmp_path)))
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(suite), "--store", str(store), "--no-progress"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})
    work = store / "tiny" / "work"
    deadline = time.time() + 120
    while not list(work.glob("*/last.ckpt")) and time.time() < deadline:  # training is under way
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, (out, err)
    assert f"interrupted by {signal.Signals(signum).name} during run fbank/fp/retrain/asr-chirps/seed0" in err
    assert f"Resume with: bench run {suite} --store {store}" in err
    assert not (store / "tiny" / "runs.jsonl").exists()  # no row for an unfinished run


@pytest.mark.slow
def test_local_launcher_runs_one_job_per_run_into_the_store(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY.format(root=tiny_corpus(tmp_path)).replace("max_steps = 4000", "max_steps = 4")
                     + '\n[[runs]]\nupstreams = ["fbank"]\nquant = ["fp"]\ndata = ["chirps"]\nseeds = [1]\n')
    store = tmp_path / "store"
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(suite), "--store", str(store), "--launcher", "local",
                           "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "2 job(s) submitted (local)" in done.stdout and "2 job(s) finished, 0 failed" in done.stdout
    rows = [json.loads(line) for line in (store / "tiny" / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in rows) == [0, 1]
    again = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(suite), "--store", str(store), "--launcher", "local"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "already in the store" in again.stdout


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_model_cost_of_a_uniformly_quantized_model_is_the_named_cost(tiny_hubert, bits):
    from upstream_quant.accounting import cost_report

    config = BinaryConfig() if bits == 1 else UniformConfig(bits=bits)
    model, named = model_cost(quantize(tiny_hubert, config, progress=False)), cost_report(tiny_hubert, bits)
    assert model.storage_mb["paper"] == pytest.approx(named.storage_mb["paper"], abs=1e-9)
    assert model.storage_mb["stored"] == pytest.approx(named.storage_mb["stored"], abs=1e-9)
    assert model.est_runtime == pytest.approx(named.est_runtime)
    assert model_cost(tiny_hubert).storage_mb == pytest.approx(cost_report(tiny_hubert, 16).storage_mb)


@pytest.mark.parametrize("symmetric", [True, False])
def test_the_named_cost_counts_groups_and_zero_points_as_the_packed_file_stores_them(tiny_hubert, symmetric):
    """What `bench run --dry-run` estimates for a grouped (asymmetric) row is what the model stores."""
    from upstream_quant.accounting import cost_report

    model = quantize(tiny_hubert, UniformConfig(bits=2, group_size=16, symmetric=symmetric), progress=False)
    named = cost_report(tiny_hubert, 2, group_size=16, zero_point=not symmetric)
    assert model_cost(model).storage_mb["stored"] == pytest.approx(named.storage_mb["stored"], abs=1e-9)
    assert named.storage_mb["stored"] > cost_report(tiny_hubert, 2).storage_mb["stored"]  # a scale per 16, not per row


def test_runs_evaluate_the_packed_file_and_a_later_invocation_reloads_it(tmp_path, tiny_hubert):
    from bench.runner import Runner
    from bench.suites import RunSpec, Suite, QuantSpec
    from upstream_quant.qweight import QuantizedLayer

    suite = Suite("t", tmp_path / "t.toml", "", {"d": {}}, {"asr": {}}, [], {}, {"d": {}})
    run = RunSpec("t", "hubert_base", QuantSpec.parse("uniform:3"), "asr", "d", "reuse", 0)
    first = Runner(suite, tmp_path / "store")
    first._upstreams[("hubert_base", None)] = tiny_hubert
    model = first.quantized(run)
    assert model.packed_file.is_file() and model.source == str(model.packed_file)
    later = Runner(suite, tmp_path / "store")  # a new invocation: nothing in memory, no upstream loaded
    again = later.quantized(run)
    for name, m in model.named_modules():
        if isinstance(m, QuantizedLayer):
            assert torch.equal(again.get_submodule(name).weight, m.weight)
    from upstream_quant.accounting import under_any

    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert under_any(name, model.unused_at_inference) or torch.equal(a, b), name  # unused: not stored

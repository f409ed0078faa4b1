"""Deploy backends: each checked against the reference path, resident bytes counted exactly, and
every backend refusing what it cannot run."""

import math

import pytest
import torch

from bench.cli import main
from upstream_quant.methods.binary import BinaryConfig
from upstream_quant.deploy import (
    DeployError, Int4WeightLayer, Int8DynamicLayer, PackedLayer, TorchaoInt8Layer, deploy, resident_weight_bytes, unpack,
    why_not,
)
from upstream_quant.packed import load_packed, pack_codes, save_packed, unpack_codes
from upstream_quant.qweight import QuantizedLayer
from upstream_quant.quantize import quantize
from upstream_quant.methods.uniform import UniformConfig, quantize_uniform


@pytest.mark.parametrize("bits", range(1, 9))
def test_torch_unpacking_matches_the_file_format(bits):
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (13, 7), generator=gen).to(torch.uint8)  # 91 codes: a partial last byte
    packed = pack_codes(codes, bits)
    assert torch.equal(unpack(packed, bits, codes.numel()).reshape(codes.shape), codes)
    assert torch.equal(unpack_codes(packed, bits, tuple(codes.shape)), codes)


def _states(model, batch):
    with torch.no_grad():
        return model(*batch)[0]


@pytest.mark.parametrize("config", [
    BinaryConfig(), UniformConfig(bits=2), UniformConfig(bits=3, symmetric=False, group_size=16),
    UniformConfig(bits=4, group_size=32), UniformConfig(bits=8), UniformConfig(bits=2, act_bits=8),
])
def test_packed_backend_is_the_reference_exactly_and_holds_bits_over_8_bytes(tiny_hubert, batch, config):
    reference = quantize(tiny_hubert, config, progress=False)
    deployed = deploy(reference, "packed")
    for a, b in zip(_states(reference, batch), _states(deployed, batch)):
        assert torch.equal(a, b)
    layers = {n: m for n, m in reference.named_modules() if isinstance(m, QuantizedLayer)}
    expected = 0
    for name, m in layers.items():
        assert isinstance(deployed.get_submodule(name), PackedLayer)
        n, rows_groups = m.codes.numel(), m.scale.numel()
        zeros = 0 if bool((m.zero == m.zero.flatten()[0]).all()) else rows_groups * 2
        expected += math.ceil(n * m.bits / 8) + rows_groups * 2 + zeros + (m.bias.numel() * 4 if m.bias is not None else 0)
    assert resident_weight_bytes(deployed) == expected  # codes at their bits, fp16 scales, fp32 biases: nothing else
    weights = sum(m.codes.numel() for m in layers.values())
    assert resident_weight_bytes(reference) >= 5 * weights  # uint8 codes + a float32 weight
    if config.bits <= 2 and config.group_size is None:
        assert resident_weight_bytes(deployed) <= 1.1 * (weights * config.bits / 8 + sum(m.scale.numel() * 2 for m in layers.values())
                                                         + sum(m.bias.numel() * 4 for m in layers.values()))


def _quantized_layer(original, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        original.weight.normal_(0, 0.05)
    return QuantizedLayer(original, quantize_uniform(original.weight.detach(), UniformConfig(bits=8)))


@pytest.mark.parametrize("original, shape", [
    (torch.nn.Linear(24, 40), (3, 17, 24)),
    (torch.nn.Conv1d(16, 32, 3, stride=2), (1, 16, 16500)),  # 8249 frames out: oneDNN's own zero point fails here
    (torch.nn.Conv1d(1, 8, 10, stride=5, bias=False), (2, 1, 400)),
    (torch.nn.Conv1d(64, 64, 16, padding=8, groups=2), (1, 64, 60)),  # HuBERT's positional conv, in small
    (torch.nn.Conv1d(16, 16, 5, dilation=3, padding=6), (2, 16, 40)),
])
def test_int8_dynamic_is_exact_on_its_8_bit_inputs(original, shape):
    """The kernel computes with our codes (no re-rounding) on the input's 8-bit codes: its output is
    the reference layer's on the dequantized input, to float rounding, even off-centre inputs on
    wide and padded convolutions."""
    from upstream_quant.deploy import quantize_input

    layer = _quantized_layer(original, sum(shape))
    deployed = Int8DynamicLayer(layer)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) + 0.7  # a zero point far from 0
    codes, scale, zero = quantize_input(x)
    assert codes.dtype == torch.uint8 and 100 < zero < 255
    with torch.no_grad():
        # a single-channel convolution (the waveform's) runs in fp32 on its 8-bit weights: exact on x itself
        expected = layer(x if deployed.single_channel else (codes.float() - zero) * scale)
        got = deployed(x)
    assert deployed.single_channel == (original.in_channels == 1 if isinstance(original, torch.nn.Conv1d) else False)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5
    n, biases = original.weight.numel(), (0 if original.bias is None else original.bias.numel() * 4)
    held = 4 * n if deployed.single_channel else n  # fp32 weights, or oneDNN's one byte a weight
    assert deployed.resident_bytes() == held + original.weight.shape[0] * 8 + biases  # + fp32 scales and row sums


def test_a_layer_the_kernel_gets_wrong_is_refused_or_left_to_packed(tiny_hubert, monkeypatch):
    from upstream_quant import deploy as deploy_module

    reference = quantize(tiny_hubert, UniformConfig(bits=8), progress=False)
    real = torch.ops.onednn.qlinear_pointwise
    wrong = lambda *args: real(*args) * 1.01  # a kernel 1 % off
    monkeypatch.setattr(deploy_module, "_qlinear", wrong)
    with pytest.raises(DeployError, match=r"computes this .* wrongly \(relative error 0.01.*backends that can: reference, packed"):
        deploy(reference, "int8-dynamic")
    assert set(deploy(reference, "compact").deploy_backends.values()) == {"packed"}
    # auto leaves out the form that fails its check and times the others
    assert set(deploy(reference, "auto", timer=_timer(FAST)).deploy_backends.values()) == {"packed"}


# what a probe would measure, per backend (the reference path is 1): deterministic stand-ins
FAST = {"reference": 1.0, "int8-dynamic": 0.5, "packed-int8": 0.6, "packed": 0.9}
SLOW = {"reference": 1.0, "int8-dynamic": 1.3, "packed-int8": 1.2, "packed": 2.0}


def _timer(speeds: dict, calls: list | None = None):
    def timer(module, x):
        backend = getattr(module, "backend", "reference")
        if calls is not None:
            calls.append(backend)
        return speeds[backend]
    return timer


def test_input_codes_keep_a_transposed_layout_and_equal_the_contiguous_ones():
    from upstream_quant.deploy import quantize_input

    x = torch.randn(2, 50, 16).transpose(1, 2)  # (2, 16, 50), channels last in memory
    codes, scale, zero = quantize_input(x)
    again, scale2, zero2 = quantize_input(x.contiguous())
    assert codes.stride() == x.stride() and torch.equal(codes, again) and (scale, zero) == (scale2, zero2)
    assert float(((codes.float() - zero) * scale - x).abs().max()) <= scale / 2 + 1e-6


@pytest.mark.parametrize("bits, targets", [(8, ("transformer",)), (8, ("cnn", "feature_projection", "transformer")),
                                           (4, ("transformer",))])
def test_int8_dynamic_stays_close_to_the_reference(tiny_hubert, batch, bits, targets):
    reference = quantize(tiny_hubert, UniformConfig(bits=bits, targets=targets), progress=False)
    deployed = deploy(reference, "int8-dynamic")
    assert all(isinstance(deployed.get_submodule(n), Int8DynamicLayer) for n in deployed.deploy_backends)
    assert ("cnn" in targets) == any(m.kind == "conv1d" for m in deployed.modules() if isinstance(m, Int8DynamicLayer))
    # activations are quantized to 8 bits per batch: outputs change a little, stated here
    for a, b in zip(_states(reference, batch), _states(deployed, batch)):
        rel = float((a - b).abs().max() / a.abs().max())
        assert rel < 0.05 and float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) > 0.999


def test_int4_weight_runs_pytorchs_kernel_close_to_the_reference(tiny_hubert, batch):
    reference = quantize(tiny_hubert, UniformConfig(bits=4, group_size=32), progress=False)
    deployed = deploy(reference, "int4-weight")
    assert all(isinstance(deployed.get_submodule(n), Int4WeightLayer) for n in deployed.deploy_backends)
    # bf16 activations: relative deviation of bf16 rounding, stated here
    for a, b in zip(_states(reference, batch), _states(deployed, batch)):
        assert float((a - b).abs().max() / a.abs().max()) < 0.02
        assert float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) > 0.9999


@pytest.mark.parametrize("chooser", ["compact", "auto"])
def test_int8_kernels_where_they_run_and_packed_elsewhere(tiny_hubert, chooser):
    """``compact`` by rule; ``auto`` the same where the low-bit forms are the faster ones."""
    from upstream_quant.methods.mixed import MixedPrecisionConfig
    from upstream_quant.quantize import target_layers

    kwargs = {"timer": _timer(FAST)} if chooser == "auto" else {}
    layers = sorted(target_layers(tiny_hubert, ("transformer",)))
    mixed = quantize(tiny_hubert, MixedPrecisionConfig(bit_map=tuple((n, 8 if i % 2 else 2) for i, n in enumerate(layers))),
                     progress=False)
    plan = deploy(mixed, chooser, **kwargs).deploy_backends
    assert plan == {n: ("int8-dynamic" if i % 2 else "packed-int8") for i, n in enumerate(layers)}
    grouped = quantize(tiny_hubert, UniformConfig(bits=4, group_size=16), progress=False)
    assert set(deploy(grouped, chooser, **kwargs).deploy_backends.values()) == {"packed"}  # groups: no one int8 product
    wide = quantize(tiny_hubert, UniformConfig(bits=8, symmetric=False), progress=False)
    assert set(deploy(wide, chooser, **kwargs).deploy_backends.values()) == {"packed"}  # codes - zero beyond int8


def test_auto_keeps_the_reference_where_no_low_bit_form_is_faster_and_says_so(tiny_hubert, batch):
    model = quantize(tiny_hubert, UniformConfig(bits=4), progress=False)
    calls = []
    deployed = deploy(model, "auto", timer=_timer(SLOW, calls))
    assert set(deployed.deploy_backends.values()) == {"reference"}
    assert set(deployed.deploy_notes) == set(deployed.deploy_backends)
    assert all("reference kept: packed-int8 took 1.20x" in note for note in deployed.deploy_notes.values())
    for a, b in zip(_states(model, batch), _states(deployed, batch)):
        assert torch.equal(a, b)  # the reference path itself
    # one probe per distinct layer shape and backend, not per layer
    shapes = {tuple(m.codes.shape) for m in model.modules() if isinstance(m, QuantizedLayer)}
    assert len(calls) == 3 * len(shapes) < 3 * len(deployed.deploy_backends)
    # a margin: a form only 3 % faster than the reference is noise on a shared machine, not a gain
    assert set(deploy(model, "auto", timer=_timer(FAST | {"packed-int8": 0.97, "packed": 0.98})).deploy_backends.values()) == {"reference"}


def test_auto_probe_timings_are_cached_per_machine_and_shape(tiny_hubert, tmp_path, monkeypatch):
    from upstream_quant import autotune
    from upstream_quant.deploy import measured_plan

    model = quantize(tiny_hubert, UniformConfig(bits=2), progress=False)
    calls = []
    cache = autotune.ProbeCache(tmp_path / "probe.json")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    plan, _ = measured_plan(layers, torch.device("cpu"), timer=_timer(FAST, calls), cache=cache)
    assert set(plan.values()) == {"packed-int8"} and calls and (tmp_path / "probe.json").is_file()
    again = autotune.ProbeCache(tmp_path / "probe.json")
    calls.clear()
    assert measured_plan(layers, torch.device("cpu"), timer=_timer(FAST, calls), cache=again)[0] == plan
    assert calls == []  # every timing came from the file
    (tmp_path / "probe.json").write_text("{not json")  # a damaged cache is timed again, not an error
    assert measured_plan(layers, torch.device("cpu"), timer=_timer(FAST, calls),
                         cache=autotune.ProbeCache(tmp_path / "probe.json"))[0] == plan and calls


def test_auto_with_the_real_timer_is_never_slower_than_the_reference_path_by_its_own_probe(tiny_hubert):
    """The real timer on the machine that runs the tests: whatever it picks, it picked a form
    that its probe measured at or below the reference's time (the benchmark is `bench deploy`)."""
    from upstream_quant import autotune
    from upstream_quant.deploy import measured_plan

    model = quantize(tiny_hubert, UniformConfig(bits=4), progress=False)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    cache = autotune.ProbeCache(None)
    plan, notes = measured_plan(layers, torch.device("cpu"), cache=cache)
    machine = autotune.machine_key(torch.device("cpu"))
    for name, backend in plan.items():
        layer = layers[name]
        ref = cache.get(machine, autotune.layer_key(layer, "reference"))
        assert ref is not None and (backend == "reference" or cache.get(machine, autotune.layer_key(layer, backend)) <= ref)
        assert (backend == "reference") == (name in notes)


@pytest.mark.parametrize("config", [UniformConfig(bits=2), UniformConfig(bits=4, symmetric=False), UniformConfig(bits=3),
                                    UniformConfig(bits=7, symmetric=False), UniformConfig(bits=8),
                                    BinaryConfig(), BinaryConfig(center=True)])
def test_packed_int8_is_exact_on_its_8_bit_inputs_and_holds_what_packed_holds(config):
    """Bit-packed codes on int8 products: exact on per-token 8-bit inputs (integer zero points,
    per-row ones, and the fractional ones of centred binary weights alike)."""
    from upstream_quant.deploy import PackedInt8Layer
    from upstream_quant.methods.binary import binarize

    original = torch.nn.Linear(48, 40)
    torch.manual_seed(5)
    with torch.no_grad():
        original.weight.normal_(0, 0.05)
    weight = original.weight.detach()
    layer = QuantizedLayer(original, binarize(weight, config) if isinstance(config, BinaryConfig) else quantize_uniform(weight, config))
    deployed = PackedInt8Layer(layer)
    x = torch.randn(3, 11, 48, generator=torch.Generator().manual_seed(4)) + 0.3
    x_scale = x.abs().amax(-1, keepdim=True) / 127
    with torch.no_grad():
        expected = layer(torch.round(x / x_scale) * x_scale)
        got = deployed(x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5
    assert resident_weight_bytes(deployed) == resident_weight_bytes(PackedLayer(layer))


@pytest.mark.parametrize("config, backend, message", [
    (BinaryConfig(), "int8-dynamic", "symmetric integer weights"),
    (UniformConfig(bits=8, group_size=32), "int8-dynamic", "one scale per row"),
    (UniformConfig(bits=8, symmetric=False), "int8-dynamic", "zero-point 128 at 8 bits"),
    (UniformConfig(bits=4, symmetric=False), "int8-dynamic", "zero-point 8 at 4 bits"),
    (UniformConfig(bits=8, act_bits=4), "int8-dynamic", "this layer's are 4"),
    (UniformConfig(bits=4), "int4-weight", "groups of 32/64/128/256, not one per row"),
    (UniformConfig(bits=2, group_size=32), "int4-weight", "needs 4-bit weights"),
    (UniformConfig(bits=4, targets=("cnn",)), "int4-weight", "linear layers only"),
    (UniformConfig(bits=4, group_size=32), "packed-int8", "one scale per row, not groups"),
    (UniformConfig(bits=8, symmetric=False), "packed-int8", "code - zero point within int8"),
    (UniformConfig(bits=2, targets=("cnn",)), "packed-int8", "linear layers only"),
    (UniformConfig(bits=4), "int7", "unknown backend 'int7'"),
])
def test_a_backend_refuses_what_it_cannot_run_naming_those_that_can(tiny_hubert, config, backend, message):
    reference = quantize(tiny_hubert, config, progress=False)
    with pytest.raises(DeployError, match=message) as err:
        deploy(reference, backend)
    if backend != "int7":
        assert "backends that can: reference" in str(err.value) and "packed" in str(err.value)


def test_cpu_kernels_are_refused_on_other_devices(tiny_hubert, monkeypatch):
    from upstream_quant import deploy as deploy_module

    model = quantize(tiny_hubert, UniformConfig(bits=8, targets=("cnn", "transformer")), progress=False)
    linear = next(m for m in model.modules() if isinstance(m, QuantizedLayer) and m.kind == "linear")
    conv = next(m for m in model.modules() if isinstance(m, QuantizedLayer) and m.kind == "conv1d")
    cuda = torch.device("cuda")
    assert "on cuda use packed or reference" in why_not("int4-weight", linear, cuda)
    assert "on cuda use packed or reference" in why_not("packed-int8", linear, cuda)
    assert why_not("packed", linear, cuda) is None
    assert "linear layers only" in why_not("int8-dynamic", conv, cuda)
    assert why_not("int8-dynamic", linear, cuda) is None and deploy_module._module("int8-dynamic", cuda) is TorchaoInt8Layer
    assert deploy_module.choose(conv, cuda) == "packed"
    monkeypatch.setattr(deploy_module, "torchao_available", lambda: False)
    assert "pip install torchao" in why_not("int8-dynamic", linear, cuda)
    with pytest.raises(DeployError, match="no quantized layers"):
        deploy(tiny_hubert, "packed")


def test_torchaos_int8_layer_holds_our_codes_and_stays_close_to_the_reference():
    """The CUDA int8 path, run here on CPU (torchao's int8 tensor computes the same on both; on
    CUDA its matmul is cuBLAS's): our codes exactly, and per-token 8-bit inputs close to the reference."""
    layer = _quantized_layer(torch.nn.Linear(48, 40), 3)
    deployed = TorchaoInt8Layer(layer)
    assert torch.equal(deployed.weight.qdata.to(torch.int16), layer.codes.to(torch.int16) - 128)  # not re-rounded
    assert torch.equal(deployed.weight.scale.flatten(), layer.scale.flatten().float())
    x = torch.randn(2, 30, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = layer(x), deployed(x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max() / expected.abs().max()) < 0.02
    assert float(torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0)) > 0.9999
    assert deployed.resident_bytes() == 48 * 40 + 40 * 4 + 40 * 4  # int8 codes, fp32 scales, fp32 bias


def test_bench_deploy_reports_memory_deviation_and_latency(tiny_hubert, tmp_path, capsys):
    path = save_packed(quantize(tiny_hubert, UniformConfig(bits=2), progress=False), tmp_path / "two.safetensors")
    assert main(["deploy", "--packed", str(path), "--backend", "packed", "--seconds", "0.5", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "on packed (" in out and "max |deployed - reference| 0," in out and "deployed" in out
    reloaded = load_packed(path)
    assert resident_weight_bytes(deploy(reloaded, "packed")) < resident_weight_bytes(reloaded) / 8
    assert main(["deploy", "--packed", str(path), "--backend", "int4-weight"]) == 2
    assert "needs 4-bit weights" in capsys.readouterr().err


@pytest.mark.slow
def test_a_suite_row_at_backend_runs_deployed_and_records_measured_runtime_and_memory(tmp_path):
    import json

    from bench.tables import suite_table
    from conftest import tiny_corpus, tiny_suite_toml

    suite = tmp_path / "s.toml"
    suite.write_text(tiny_suite_toml(str(tiny_corpus(tmp_path)), """
[[runs]]
upstreams = ["distil_whisper_tiny_en"]
quant = ["uniform:8", "uniform:8@int8-dynamic", "binary:1@packed"]
data = ["chirps"]
protocol = "reuse"
""", max_steps=6))
    store = tmp_path / "store"
    assert main(["run", str(suite), "--store", str(store), "--no-progress"]) == 0
    rows = {r["quant"]: r for r in map(json.loads, (store / "tiny" / "runs.jsonl").read_text().splitlines())}
    ref, int8, binary = rows["uniform8"], rows["uniform8@int8-dynamic"], rows["binary1@packed"]
    assert ref["packed_file"] == int8["packed_file"]  # one model, evaluated on two paths
    assert "deploy" not in ref or ref["deploy"] is None
    assert int8["deploy"]["layers"] == {"int8-dynamic": 6} and binary["deploy"]["layers"] == {"packed": 6}
    assert int8["measured_runtime"] > 0 and int8["deploy"]["latency_fp32_s"] > 0
    assert int8["weights_mb_resident"] < int8["weights_mb_resident_fp32"] / 3.5
    assert binary["weights_mb_resident"] < binary["weights_mb_resident_fp32"] / 20
    table = suite_table("tiny", store).set_index("config")
    assert {"measured_runtime", "weights_mb_resident"} <= set(table.columns)
    assert table.loc["distil_whisper_tiny_en/uniform8@int8-dynamic/reuse", "measured_runtime"] == int8["measured_runtime"]
    assert (store / "tiny" / "plots" / "asr_chirps_deploy.png").is_file()


@pytest.mark.slow
def test_bench_perf_deploy_measures_in_rounds_and_writes_what_the_paper_table_reads(tmp_path, capsys):
    import json

    out = tmp_path / "deploy" / "distilhubert.json"
    assert main(["perf", "deploy", "--upstream", "distilhubert", "--seconds", "0.5", "--reps", "1", "--rounds", "2",
                 "--configs", "2:packed", "--no-peers", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    fp, two = record["rows"]
    assert record["rounds"] == 2 and fp["backend"] == "fp32" and fp["measured_runtime"] == 1.0
    lo, hi = two["measured_range"]
    assert two["backend"] == "packed" and lo <= two["measured_runtime"] <= hi
    assert two["linear_weights_mb"] < fp["linear_weights_mb"] / 10  # 2-bit codes resident instead of fp32
    assert abs(two["linear_weights_mb"] - two["ideal_mb"]) / two["ideal_mb"] < 0.1
    assert "2 round(s)" in capsys.readouterr().out

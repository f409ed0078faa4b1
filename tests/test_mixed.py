"""myQASR mixed precision: sensitivity, allocation to a budget, quantization, CLI."""

import json

import pytest
import torch
from torch import nn

from bench.cli import main
from upstream_quant.methods.mixed import (
    BudgetError, MixedPrecisionConfig, SizeModel, allocate_bits, coverage, mixed_precision, sensitivity, size_model,
)
from upstream_quant.packed import load_packed
from upstream_quant.qweight import QuantizedLayer
from upstream_quant.quantize import quantize
from upstream_quant.methods.uniform import UniformConfig, quantize_uniform


def _sizes(n=6):
    return SizeModel(fixed_bytes=1000, layers={f"l{i}": (1000 * (i + 1), 10) for i in range(n)})


def test_allocation_meets_budget_within_one_step_and_uses_two_adjacent_widths():
    scores = {f"l{i}": float(i) for i in range(6)}
    sizes = _sizes()
    for budget in (0.012, 0.015, 0.02):
        bits = allocate_bits(scores, sizes, budget)
        total = sizes.total_mb(bits)
        assert total <= budget
        # one more bit on the last-lowered layer would exceed the budget
        widths = sorted(set(bits.values()))
        assert len(widths) <= 2 and (len(widths) == 1 or widths[1] - widths[0] == 1)
        largest_step = max(sizes.layer_bytes(n, 8) - sizes.layer_bytes(n, 7) for n in bits) / 1e6
        assert budget - total <= largest_step + 1e-12


def test_descending_order_lowers_the_largest_activations_first():
    scores = {"a": 3.0, "b": 2.0, "c": 1.0}
    sizes = SizeModel(0, {n: (8000, 1) for n in scores})
    one_step = sizes.total_mb({"a": 7, "b": 8, "c": 8})
    assert allocate_bits(scores, sizes, one_step) == {"a": 7, "b": 8, "c": 8}
    assert allocate_bits(scores, sizes, one_step, order="ascending") == {"a": 8, "b": 8, "c": 7}
    two = sizes.total_mb({"a": 7, "b": 7, "c": 8})
    assert allocate_bits(scores, sizes, two) == {"a": 7, "b": 7, "c": 8}
    shuffled = [tuple(sorted(allocate_bits(scores, sizes, one_step, order="shuffled", seed=s).items())) for s in range(6)]
    assert len(set(shuffled)) > 1


def test_budget_outside_the_feasible_range_states_it():
    scores = {"a": 1.0}
    sizes = SizeModel(0, {"a": (8_000_000, 100)})
    with pytest.raises(BudgetError, match=r"below the smallest reachable size 2\.000.*feasible range 2\.000 \.\. 8\.000"):
        allocate_bits(scores, sizes, 1.0)
    with pytest.raises(BudgetError, match="needs no mixed precision"):
        allocate_bits(scores, sizes, 9.0)


class TwoBranch(nn.Module):
    """A fixture whose two layers see inputs of different scale depending on the 'speaker'."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.low = nn.Linear(16, 16)
        self.high = nn.Linear(16, 16)

    def forward(self, wavs, lens):
        frames = wavs[:, : wavs.shape[1] // 16 * 16].reshape(wavs.shape[0], -1, 16)
        low_band = frames * (frames.abs() < 0.5)
        high_band = frames * (frames.abs() >= 0.5)
        return [self.low(low_band), self.high(high_band)], [lens, lens]


def test_group_specific_calibration_gives_group_specific_allocations():
    model = TwoBranch()
    quiet = [0.3 * torch.randn(4000) for _ in range(4)]   # mostly the 'low' branch
    loud = [3.0 * torch.randn(4000) for _ in range(4)]    # mostly the 'high' branch
    layers = {"low": model.low, "high": model.high}
    s_quiet, s_loud = sensitivity(model, quiet, layers), sensitivity(model, loud, layers)
    assert s_quiet["low"] > s_quiet["high"] and s_loud["high"] > s_loud["low"]
    sizes = SizeModel(0, {"low": (256, 16), "high": (256, 16)})
    budget = sizes.total_mb({"low": 7, "high": 8})
    assert allocate_bits(s_quiet, sizes, budget) == {"low": 7, "high": 8}
    assert allocate_bits(s_loud, sizes, budget) == {"low": 8, "high": 7}
    # each statistic is what it names, computed here from the layers' own inputs and outputs
    outs = {n: [] for n in layers}
    errs = {n: [] for n in layers}
    with torch.no_grad():
        for wav in quiet:
            frames = wav[: wav.numel() // 16 * 16].reshape(1, -1, 16)
            for name, x in (("low", frames * (frames.abs() < 0.5)), ("high", frames * (frames.abs() >= 0.5))):
                layer = layers[name]
                probe = quantize_uniform(layer.weight, UniformConfig(bits=4)).dequantize().reshape(layer.weight.shape)
                outs[name].append(layer(x).flatten())
                errs[name].append((layer(x) - torch.nn.functional.linear(x, probe, layer.bias)).flatten())
    out = {n: torch.cat(v) for n, v in outs.items()}
    err = {n: torch.cat(v) for n, v in errs.items()}
    expected = {
        "mean": {n: float(v.abs().mean()) for n, v in out.items()},
        "max": {n: float(v.abs().max()) for n, v in out.items()},
        "median": {n: float(v.abs().median()) for n, v in out.items()},  # 4 x 250 x 16 values: all kept
        "l1": {n: float(v.abs().mean()) for n, v in err.items()},
        "l2": {n: float(v.pow(2).mean().sqrt()) for n, v in err.items()},
    }
    for stat, values in expected.items():
        assert sensitivity(model, quiet, layers, stat) == pytest.approx(values, rel=1e-5), stat


def test_cosine_calibration_never_scores_below_minmax_on_its_objective():
    torch.manual_seed(0)
    w = torch.randn(32, 64) * torch.linspace(0.1, 3, 64)
    x = torch.randn(200, 64)
    ref = x @ w.T

    class Stats:
        sample = x

    for bits in (2, 3, 4):
        mm = quantize_uniform(w, UniformConfig(bits=bits)).dequantize()
        cs = quantize_uniform(w, UniformConfig(bits=bits, clip="cosine"), Stats()).dequantize()
        cos = lambda q: torch.nn.functional.cosine_similarity((x @ q.T).flatten(), ref.flatten(), dim=0)  # noqa: E731
        assert cos(cs) >= cos(mm) - 1e-7


def test_whole_method_on_a_real_upstream_and_the_cli(tiny_hubert, tmp_path):
    torch.manual_seed(0)
    wavs = [torch.randn(8000) for _ in range(4)]
    layers = coverage(tiny_hubert)
    sizes = size_model(tiny_hubert, layers)
    budget = (sizes.total_mb({n: 2 for n in layers}) + sizes.total_mb({n: 8 for n in layers})) / 2
    model, report = mixed_precision(tiny_hubert, wavs, budget)
    assert report["size_mb"] <= budget and len(report["widths"]) <= 2
    assert "model.feature_extractor.conv_layers.0.0" in {x["name"] for x in report["layers"]}
    assert not any("pos_conv" in x["name"] for x in report["layers"])
    with pytest.raises(ValueError, match="not quantizable here"):
        quantize(tiny_hubert, MixedPrecisionConfig(bit_map=(("nope", 4),)))
    with pytest.raises(ValueError, match="empty"):
        mixed_precision(tiny_hubert, [], budget)

    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_hubert.s3prl_state(), ckpt)
    calib = tmp_path / "calib"
    calib.mkdir()
    import soundfile as sf

    for i, w in enumerate(wavs):
        sf.write(calib / f"{i}.wav", w.numpy() * 0.1, 16000)
    out = tmp_path / "mixed.safetensors"
    assert main(["mixed", "--upstream", "hubert_base", "--checkpoint", str(ckpt), "--budget-mb", f"{budget:.6f}",
                 "--calib-dir", str(calib), "--out", str(out), "--device", "cpu"]) == 0
    bits = json.loads(out.with_suffix(".bits.json").read_text())
    assert bits["size_mb"] <= budget and out.with_suffix(".bits.png").is_file()
    reloaded = load_packed(out, device="cpu")
    assert {m.bits for m in reloaded.modules() if hasattr(m, "codes")} == set(bits["widths"])
    assert main(["mixed", "--upstream", "hubert_base", "--checkpoint", str(ckpt), "--budget-mb", "0.001",
                 "--calib-dir", str(calib), "--out", str(out)]) == 2


def test_hessian_statistics_estimate_the_gauss_newton_diagonal_label_free():
    """For f(x) = A layer(x), the Gauss-Newton Hessian of ||f_q - f||^2 / 2 with respect to the
    layer's output is A^T A; the collected g^2 (random probes, no labels) averages to its diagonal."""
    from upstream_quant.calibration import collect_stats

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3, bias=False)).eval()
    stats = collect_stats(model, {"0": model[0]}, [torch.randn(250, 4) for _ in range(16)], need_hessian=False,
                          need_sample=True, need_grads=True)["0"]
    g2 = stats.grad_sample
    assert g2.shape == (4000, 6) and stats.sample.shape == (4000, 4)
    expected = (model[1].weight.detach() ** 2).sum(0)  # diag(A^T A)
    assert torch.allclose(g2.mean(0), expected, rtol=0.1)
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())  # activations only


def test_hessian_calibration_scores_at_least_minmax_and_runs_in_the_whole_method(tiny_hubert):
    from upstream_quant.calibration import collect_stats

    torch.manual_seed(0)
    wavs = [0.1 * torch.randn(8000) for _ in range(3)]
    layers = coverage(tiny_hubert, "transformer")
    name = sorted(layers)[-1]
    stats = collect_stats(tiny_hubert, {name: layers[name]}, wavs, need_hessian=False, need_sample=True,
                          need_grads=True)[name]
    w = layers[name].weight.detach()
    x, g2 = stats.sample, stats.grad_sample
    ref = x @ w.T

    def score(q):
        return -float((g2 * (ref - x @ q.T) ** 2).mean())

    for bits in (2, 3):
        mm = quantize_uniform(w, UniformConfig(bits=bits)).dequantize()
        hs = quantize_uniform(w, UniformConfig(bits=bits, clip="hessian"), stats).dequantize()
        assert score(hs) >= score(mm)
    sizes = size_model(tiny_hubert, coverage(tiny_hubert))
    budget = (sizes.total_mb({n: 2 for n in coverage(tiny_hubert)}) + sizes.total_mb({n: 8 for n in coverage(tiny_hubert)})) / 2
    model, report = mixed_precision(tiny_hubert, wavs, budget, clip="hessian")
    assert report["clip"] == "hessian" and report["size_mb"] <= budget
    with pytest.raises(ValueError, match="needs calibration"):
        quantize(tiny_hubert, UniformConfig(bits=4, clip="hessian"), progress=False)


def test_gptq_rounding_to_an_average_width_keeps_the_layers_gptq_leaves_most_error_in_wider(tiny_hubert, monkeypatch):
    """`rounding="gptq"`: scores are GPTQ's relative output error at the lowest width, the least
    damaged layers are lowered first, and every linear is rounded by sequential GPTQ."""
    from upstream_quant.methods import mixed

    torch.manual_seed(0)
    wavs = [torch.randn(8000) for _ in range(4)]
    model, report = mixed_precision(tiny_hubert, wavs, None, budget_bits=2.5, rounding="gptq", group_size=16,
                                    symmetric=False, layer_coverage="transformer", rotate=True)
    layers = report["layers"]
    assert report["widths"] == [2, 3] and report["statistic"] == "gptq"
    assert 2.25 < report["average_bits"] <= 2.5
    assert min(x["score"] for x in layers if x["bits"] == 3) >= max(x["score"] for x in layers if x["bits"] == 2)
    kept = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    assert set(kept) == {x["name"] for x in layers}
    assert {m.method for m in kept.values()} == {"gptq"} and {m.group_size for m in kept.values()} == {16}
    assert all(m.rotation is not None for m in kept.values())
    assert {n: m.bits for n, m in kept.items()} == {x["name"]: x["bits"] for x in layers}

    def no_work(*a, **k):
        raise AssertionError("a bad budget must be refused before any calibration work")

    monkeypatch.setattr(mixed, "gptq_sensitivity", no_work)
    with pytest.raises(BudgetError, match="an average of 1.5 bits is outside the widths allocated, 2..8"):
        mixed_precision(tiny_hubert, wavs, None, budget_bits=1.5, rounding="gptq")
    with pytest.raises(BudgetError, match="give one budget"):
        mixed_precision(tiny_hubert, wavs, 3.0, budget_bits=2.5, rounding="gptq")
    with pytest.raises(ValueError, match="groups, zero-points and rotations are for GPTQ rounding"):
        mixed_precision(tiny_hubert, wavs, None, budget_bits=2.5, group_size=16)


def test_mixed_tokens_take_an_average_width_and_gptq_rounding():
    from bench.suites import QuantSpec

    spec = QuantSpec.parse("mixed:2.25b:gptq:g64:asym:rot")
    assert (spec.budget_bits, spec.budget_mb, spec.clip, spec.group_size, spec.symmetric) == (2.25, None, "gptq", 64, False)
    assert spec.label == "mixed2.25b-all-gptq-g64-asym-rot" and spec.rotate
    assert "budget_bits" not in QuantSpec.parse("mixed:4.5:calib=F").as_dict()  # older rows' hashes unchanged
    for token, message in (("mixed:2.25b:g64", "add ':gptq'"), ("mixed:xb", "neither a number of MB nor an average width"),
                           ("mixed:2.25b:gptq:ascending", "no order option")):
        with pytest.raises(ValueError, match=message):
            QuantSpec.parse(token)

import pytest
import torch
from torch import nn

from upstream_quant.methods.binary import BinaryConfig, binarize
from upstream_quant.calibration import CalibrationError, LayerStats
from upstream_quant.methods.gptq import GPTQConfig, quantize_gptq
from upstream_quant.packed import PackedFileError, load_packed, pack_codes, save_packed, unpack_codes
from upstream_quant.qweight import QuantizedLayer, QuantizedWeight
from upstream_quant.quantize import quantize
from upstream_quant.methods.uniform import UniformConfig, quantize_uniform


@pytest.fixture
def weight():
    torch.manual_seed(0)
    return torch.randn(16, 64)


def test_binary_has_exactly_two_values_per_row_and_group(weight):
    for cfg in [BinaryConfig(), BinaryConfig(group_size=16), BinaryConfig(center=True)]:
        deq = binarize(weight, cfg).dequantize()
        groups = deq.reshape(16, -1, cfg.group_size or 64)
        for row in groups.reshape(-1, groups.shape[-1]):
            assert len(torch.unique(row)) == 2


def test_binary_scale_is_mean_abs(weight):
    deq = binarize(weight, BinaryConfig()).dequantize()
    alpha = weight.abs().mean(1)
    torch.testing.assert_close(deq.abs().mean(1), alpha, rtol=1e-3, atol=1e-3)  # fp16-rounded scale
    assert torch.equal(torch.sign(deq), torch.sign(weight))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [None, 16])
def test_uniform_levels_and_error_falls_with_bits(weight, symmetric, group_size):
    errors = []
    for bits in range(2, 9):
        qw = quantize_uniform(weight, UniformConfig(bits=bits, group_size=group_size, symmetric=symmetric))
        assert int(qw.codes.max()) < 2**bits
        rows = qw.dequantize().reshape(16, -1, group_size or 64)
        assert max(len(torch.unique(g)) for g in rows.reshape(-1, rows.shape[-1])) <= 2**bits
        errors.append(float(((qw.dequantize() - weight) ** 2).sum()))
    assert all(a > b for a, b in zip(errors, errors[1:]))


def test_mse_search_never_worse_than_minmax(weight):
    w = weight.clone()
    w[0, 0] = 25.0  # an outlier makes min-max waste its range
    for bits in (2, 3, 4):
        base = ((quantize_uniform(w, UniformConfig(bits=bits)).dequantize() - w) ** 2).sum(1)
        mse = ((quantize_uniform(w, UniformConfig(bits=bits, clip="mse", grid=40)).dequantize() - w) ** 2).sum(1)
        assert (mse <= base + 1e-6).all()
        assert mse.sum() < base.sum()


def _stats(x):
    s = LayerStats()
    s.add(x, need_hessian=True, need_sample=True)
    return s


def test_cosine_search_never_worse_than_minmax_on_output_cosine(weight):
    torch.manual_seed(1)
    x = torch.randn(256, 64)
    w = weight.clone()
    w[3, 5] = 30.0
    ref = x @ w.T
    cos = lambda q: float(torch.nn.functional.cosine_similarity(ref.flatten(), (x @ q.dequantize().T).flatten(), dim=0))
    base = cos(quantize_uniform(w, UniformConfig(bits=2)))
    searched = cos(quantize_uniform(w, UniformConfig(bits=2, clip="cosine", grid=40), _stats(x)))
    assert searched >= base
    with pytest.raises(ValueError, match="calibration"):
        quantize_uniform(w, UniformConfig(bits=2, clip="cosine"))


@pytest.mark.parametrize("bits", [2, 3])
def test_gptq_output_error_below_round_to_nearest(bits):
    torch.manual_seed(2)
    # correlated inputs, as real activations are: where second-order compensation pays off
    x = torch.randn(512, 16) @ torch.randn(16, 64) + 0.1 * torch.randn(512, 64)
    w = torch.randn(32, 64)
    stats = _stats(x)
    rtn = quantize_uniform(w, UniformConfig(bits=bits)).dequantize()
    gptq = quantize_gptq(w, GPTQConfig(bits=bits), stats).dequantize()
    err = lambda q: float(((x @ w.T - x @ q.T) ** 2).mean())
    assert err(gptq) < err(rtn)
    grouped = quantize_gptq(w, GPTQConfig(bits=bits, group_size=16), stats)
    assert grouped.scale.shape == (32, 4) and int(grouped.codes.max()) < 2**bits


def test_one_bit_gptq_is_a_centred_binary_that_beats_rounding_each_sign(weight):
    """gptq:1:asym: two levels per group placed by weighted 2-means (neither at zero, as a 1-bit
    min-max range would put one), signs chosen with GPTQ's error compensation: a lower output
    error than the same levels with each sign rounded alone, and lower than XNOR's mean +- alpha."""
    from upstream_quant.methods.binary import centred_params
    from upstream_quant.methods.gptq import gptq
    from upstream_quant.methods.uniform import round_codes
    from upstream_quant.qweight import grouped

    def nearest(scale, zero):  # the same two levels, each weight rounded to the nearer alone
        return QuantizedWeight(round_codes(grouped(w, 16), scale, zero, 1).to(torch.uint8).reshape(w.shape),
                               scale, zero, 1, 16, "rtn")

    torch.manual_seed(2)
    x = torch.randn(512, 16) @ torch.randn(16, 64) + 0.1 * torch.randn(512, 64)
    w = torch.randn(32, 64) + 0.5  # off-centre, so that a level at zero would cost
    stats = _stats(x)
    err = lambda q: float(((x @ w.T - x @ q.T) ** 2).mean())
    q, latent = gptq(w, stats, GPTQConfig(bits=1, group_size=16, symmetric=False))
    assert q.bits == 1 and set(q.codes.unique().tolist()) == {0, 1} and q.scale.shape == (32, 4)
    levels = torch.stack([(c - q.zero) * q.scale for c in (0, 1)])
    assert bool((levels.abs() > 1e-3).all())  # no level at zero
    signs = nearest(*centred_params(grouped(w, 16), torch.diag(stats.hessian)))
    xnor = binarize(w, BinaryConfig(group_size=16, center=True))
    assert err(q.dequantize()) < err(signs.dequantize()) < err(xnor.dequantize())
    # 2-means never moves the levels away from the weights: the unweighted error is at most XNOR's
    mse = lambda q: float(((w - q.dequantize()) ** 2).mean())
    assert mse(nearest(*centred_params(grouped(w, 16)))) <= mse(xnor) + 1e-6
    with pytest.raises(ValueError, match="centred binary.*gptq:1:asym"):
        GPTQConfig(bits=1)


def test_bad_configs_are_refused(weight):
    with pytest.raises(ValueError, match="2..8"):
        UniformConfig(bits=9)
    with pytest.raises(ValueError, match="2..8"):
        UniformConfig(bits=1)
    with pytest.raises(ValueError, match="does not divide"):
        quantize_uniform(weight, UniformConfig(bits=4, group_size=24))
    with pytest.raises(ValueError, match="clip"):
        UniformConfig(clip="magic")


class Net(nn.Module):
    group_prefixes = {"enc": "transformer"}

    def __init__(self):
        super().__init__()
        self.front = nn.Conv1d(1, 8, 4, stride=4)
        self.enc = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    def forward(self, wavs, wavs_len):
        x = self.enc(self.front(wavs[:, None]).transpose(1, 2))
        return [x], [wavs_len // 4]


def test_quantize_replaces_only_targets_and_leaves_the_original_untouched():
    torch.manual_seed(0)
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    q = quantize(net, UniformConfig(bits=4), progress=False)
    assert isinstance(q.enc[0], QuantizedLayer) and isinstance(q.enc[2], QuantizedLayer)
    assert isinstance(q.front, nn.Conv1d)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    both = quantize(net, BinaryConfig(targets=("*",)), progress=False)
    assert isinstance(both.front, QuantizedLayer)
    x = torch.randn(2, 64)
    out = both(x, torch.tensor([64, 64]))[0][0]
    assert out.shape == (2, 16, 8) and torch.isfinite(out).all()


def test_quantize_errors_leave_nothing_half_done():
    net = Net()
    with pytest.raises(ValueError, match="nothing to quantize"):
        quantize(net, UniformConfig(bits=4, targets=("cnn",)), progress=False)
    with pytest.raises(CalibrationError, match="calibration"):
        quantize(net, GPTQConfig(bits=4), progress=False)
    with pytest.raises(CalibrationError, match="empty"):
        quantize(net, GPTQConfig(bits=4), calibration=[], progress=False)
    with pytest.raises(CalibrationError, match="too short"):
        quantize(net, GPTQConfig(bits=4), calibration=[torch.zeros(100)], progress=False)
    assert isinstance(net.enc[0], nn.Linear)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_bit_packing_round_trip(bits):
    torch.manual_seed(bits)
    codes = torch.randint(0, 2**bits, (7, 13), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.numel() == -(-codes.numel() * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, (7, 13)), codes)


@pytest.mark.parametrize("config", [BinaryConfig(center=True), UniformConfig(bits=2), UniformConfig(bits=3, symmetric=False, group_size=8),
                                    UniformConfig(bits=8), GPTQConfig(bits=1, symmetric=False, group_size=8)])
def test_packed_file_reloads_bit_exact_and_matches_stored_accounting(tiny_hubert, batch, tmp_path, config):
    from upstream_quant.accounting import param_inventory, storage_bytes, stored_policy

    calibration = [batch[0][0]] if getattr(config, "needs_calibration", False) else None
    q = quantize(tiny_hubert, config, calibration=calibration, progress=False)
    path = save_packed(q, tmp_path / "model.safetensors")
    loaded = load_packed(path, device="cpu")
    for name, m in q.named_modules():
        if isinstance(m, QuantizedLayer):
            assert torch.equal(loaded.get_submodule(name).weight, m.weight), name
    with torch.no_grad():
        torch.testing.assert_close(loaded(*batch)[0][-1], q(*batch)[0][-1], atol=2e-2, rtol=2e-2)  # rest is fp16
    expected = storage_bytes(param_inventory(tiny_hubert), stored_policy(
        config.bits, group_size=config.group_size, zero_point=not getattr(config, "symmetric", True) or getattr(config, "center", False),
        unused=tiny_hubert.unused_at_inference))["total"]
    # safetensors: 8-byte length, JSON header (the manifest; ~20 kB, negligible at real sizes), payload
    header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    assert abs(path.stat().st_size - header - expected) / expected < 0.02


def test_packed_file_refuses_corruption(tiny_hubert, tmp_path):
    path = save_packed(quantize(tiny_hubert, UniformConfig(bits=4), progress=False), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(PackedFileError, match="sha256"):
        load_packed(bad)
    (tmp_path / "trunc.safetensors").write_bytes(bytes(data[:100]))
    with pytest.raises(PackedFileError, match="trunc.safetensors"):
        load_packed(tmp_path / "trunc.safetensors")
    with pytest.raises(PackedFileError, match="not found"):
        load_packed(tmp_path / "missing.safetensors")


def test_gptq_on_an_upstream_with_calibration_audio(tiny_hubert, batch):
    calib = [batch[0][0], batch[0][1, :11000]]
    q = quantize(tiny_hubert, GPTQConfig(bits=3), calibration=calib, progress=False)
    rtn = quantize(tiny_hubert, UniformConfig(bits=3), progress=False)
    with torch.no_grad():
        ref = tiny_hubert(*batch)[0][-1]
        err = lambda m: float(((m(*batch)[0][-1] - ref) ** 2).mean())
        assert err(q) < err(rtn)


def test_cnn_and_weight_normed_positional_conv_quantize_and_run(tiny_hubert, batch):
    from upstream_quant.quantize import effective_weight

    pos = tiny_hubert.model.encoder.pos_conv[0]
    w = effective_weight(pos).detach().clone()
    q = quantize(tiny_hubert, UniformConfig(bits=8, targets=("positional_conv", "cnn")), progress=False)
    qpos = q.model.encoder.pos_conv[0]
    assert isinstance(qpos, QuantizedLayer) and isinstance(q.model.feature_extractor.conv_layers[0][0], QuantizedLayer)
    assert float((qpos.weight - w).abs().max()) <= float(qpos.scale.max())  # within one 8-bit step
    with torch.no_grad():
        ref, out = tiny_hubert(*batch)[0][-1], q(*batch)[0][-1]
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.99

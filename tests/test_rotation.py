"""Incoherence processing: seeded rotations of a linear layer's inputs before rounding."""

import pytest
import torch
from scipy.linalg import hadamard
from torch import nn

from bench.suites import QuantSpec
from upstream_quant.deploy import deploy
from upstream_quant.methods.gptq import GPTQConfig
from upstream_quant.methods.recon import ReconConfig
from upstream_quant.methods.uniform import UniformConfig
from upstream_quant.onnx_export import why_not_onnx
from upstream_quant.packed import load_packed, save_packed
from upstream_quant.qweight import QuantizedLayer
from upstream_quant.quantize import quantize
from upstream_quant.rotation import RotationError, block_size, fwht, rotate, rotate_hessian, unrotate


@pytest.mark.parametrize("width", [64, 384, 96, 1536])
def test_rotation_is_orthogonal_and_leaves_products_unchanged(width):
    torch.manual_seed(0)
    x, w = torch.randn(6, width), torch.randn(5, width)
    xr, wr = rotate(x, 7), rotate(w, 7)
    assert torch.allclose(xr @ wr.T, x @ w.T, atol=1e-4)  # W R^T R x = W x
    assert torch.allclose(xr.norm(dim=1), x.norm(dim=1), rtol=1e-5)
    assert torch.equal(rotate(x, 7), xr) and not torch.allclose(rotate(x, 8), xr)  # one seed, one rotation
    h = x.T @ x
    assert torch.allclose(rotate_hessian(h, 7), xr.T @ xr, atol=1e-4)


@pytest.mark.parametrize("width", [64, 384, 1536])
def test_unrotate_is_the_inverse_and_moves_the_rotation_onto_the_weight(width):
    """unrotate(W_r) x = W_r (R x): what QAT's forward uses to rotate a weight once, not each input."""
    torch.manual_seed(0)
    x, w = torch.randn(6, width), torch.randn(5, width)
    assert torch.allclose(unrotate(rotate(x, 7), 7), x, atol=1e-5) and torch.allclose(rotate(unrotate(x, 7), 7), x, atol=1e-5)
    assert torch.allclose(x @ unrotate(w, 7).T, rotate(x, 7) @ w.T, atol=1e-4)
    assert not torch.allclose(unrotate(w, 7), rotate(w, 7), atol=1e-2)  # the inverse, not the rotation again


def test_hadamard_transform_and_blocks():
    assert torch.equal(fwht(torch.eye(16)), torch.tensor(hadamard(16), dtype=torch.float32))
    assert [block_size(n) for n in (384, 768, 1536, 3072, 64)] == [128, 256, 512, 1024, 64]
    with pytest.raises(RotationError, match="input width of 5"):
        block_size(5)


def test_rotation_lowers_the_output_error_of_inputs_with_outlier_channels():
    """The mechanism: a few input channels with 30x the energy of the rest make per-row scales
    waste their levels; rotated, the same 3-bit round-to-nearest leaves far less output error."""
    torch.manual_seed(0)
    x = torch.randn(2000, 256)
    x[:, :4] *= 30
    w = torch.randn(128, 256) / 16
    w[:, :4] *= 4  # the weights that meet the loud channels are large too, as in trained models
    layer = nn.Linear(256, 128, bias=False)
    layer.weight.data = w
    err = {}
    for rot in (False, True):
        q = quantize(layer, UniformConfig(bits=3, rotate=rot, targets=(nn.Linear,)), progress=False)
        err[rot] = float(((q(x) - x @ w.T) ** 2).mean() / (x @ w.T).pow(2).mean())
    assert err[True] < 0.5 * err[False], err


def test_rotated_models_save_reload_deploy_and_are_refused_by_the_onnx_export(tiny_hubert, tmp_path):
    torch.manual_seed(0)
    wavs = [torch.randn(8000) for _ in range(3)]
    x, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])
    for config in (GPTQConfig(bits=3, symmetric=False, rotate=True), ReconConfig(bits=2, steps=2, rotate=True)):
        q = quantize(tiny_hubert, config, calibration=wavs, progress=False)
        layers = {n: m for n, m in q.named_modules() if isinstance(m, QuantizedLayer)}
        assert layers and len({m.rotation for m in layers.values()}) == len(layers)  # one seed per layer
        name, layer = next(iter(layers.items()))
        inp = torch.randn(3, layer.in_features)
        assert torch.allclose(layer(inp), nn.functional.linear(rotate(inp, layer.rotation), layer.weight, layer.bias))
        again = load_packed(save_packed(q, tmp_path / f"{type(config).__name__}.safetensors"), device="cpu")
        reloaded = {n: m for n, m in again.named_modules() if isinstance(m, QuantizedLayer)}
        assert {n: m.rotation for n, m in reloaded.items()} == {n: m.rotation for n, m in layers.items()}
        assert all(torch.equal(reloaded[n].weight, m.weight) for n, m in layers.items())
        out = again(x, lengths)[0][-1]
        assert torch.allclose(deploy(again, "packed")(x, lengths)[0][-1], out, atol=1e-5)
        assert "rotated" in why_not_onnx(layer)
    plain = quantize(tiny_hubert, GPTQConfig(bits=3, symmetric=False), calibration=wavs, progress=False)
    assert all(m.rotation is None for m in plain.modules() if isinstance(m, QuantizedLayer))
    assert not any("rotation" in spec for spec in
                   __import__("upstream_quant.packed", fromlist=["read_manifest"]).read_manifest(
                       save_packed(plain, tmp_path / "plain.safetensors"))["layers"].values())


def test_an_odd_width_is_refused_before_any_work():
    model = nn.Sequential(nn.Linear(5, 4))

    def never(_model):
        raise AssertionError("calibration ran")

    with pytest.raises(RotationError, match="layer 0: an input width of 5"):
        quantize(model, GPTQConfig(bits=3, rotate=True, targets=(nn.Linear,)), calibration=never, progress=False)


def test_rot_token():
    spec = QuantSpec.parse("gptq:2:g64:asym:rot")
    assert spec.rotate and spec.label == "gptq2-g64-asym-rot" and spec.config().rotate
    assert QuantSpec.parse("recon:2:rot").config().rotate and QuantSpec.parse("uniform:3:rot").config().rotate
    assert "rotate" not in QuantSpec.parse("gptq:3").as_dict()  # other rows' hashes unchanged
    assert QuantSpec.parse("qat:2:rot").label == "qat2-rot"
    with pytest.raises(ValueError, match="rotations .* are for GPTQ rounding"):
        QuantSpec.parse("mixed:2.25b:rot")


def test_the_rotation_is_costed_in_the_estimated_runtime_and_not_in_storage(tiny_hubert):
    """Its additions cost the same at any width; against the 2-to-4-bit difference (which holds
    only the layers' MACs), they are in x rotation_ops per frame against in x out x 2/32."""
    from upstream_quant.accounting import model_cost
    from upstream_quant.rotation import rotation_ops

    est = {}
    for bits in (2, 4):
        for rot in (False, True):
            model = quantize(tiny_hubert, UniformConfig(bits=bits, rotate=rot), progress=False)
            cost = model_cost(model)
            est[bits, rot] = cost.est_runtime["encoder"]
            if rot:
                assert cost.storage_mb == model_cost(quantize(tiny_hubert, UniformConfig(bits=bits), progress=False)).storage_mb
    layers = [m for m in model.modules() if isinstance(m, QuantizedLayer)]
    extra2, extra4 = est[2, True] - est[2, False], est[4, True] - est[4, False]
    assert extra2 > 0 and extra2 == pytest.approx(extra4, rel=1e-6)
    expected = sum(m.in_features * rotation_ops(m.in_features) for m in layers) / sum(
        m.in_features * m.out_features * 2 / 32 for m in layers)
    assert extra2 / (est[4, False] - est[2, False]) == pytest.approx(expected, rel=1e-6)

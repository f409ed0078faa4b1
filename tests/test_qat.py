"""Quantization-aware distillation: STE gradients, falling loss, resume, export."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from upstream_quant.packed import load_packed, save_packed
from upstream_quant.methods.qat import FakeQuantLinear, QATConfig, export, prepare_qat, train_qat
from upstream_quant.qweight import QuantizedLayer
from upstream_quant.rotation import rotate


@pytest.mark.parametrize("method,bits", [("binary", 1), ("uniform", 2), ("uniform", 4)])
def test_ste_gradients_reach_latent_weights_and_scales(method, bits):
    torch.manual_seed(0)
    layer = FakeQuantLinear(nn.Linear(8, 4), method, bits)
    w = layer.quantized_weight()
    levels = 2 if method == "binary" else 2**bits
    assert all(len(torch.unique(row)) <= levels for row in w)
    layer(torch.randn(5, 8)).pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.log_scale.grad is not None and layer.log_scale.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        FakeQuantLinear(nn.Linear(8, 4), "binary", 2)


def test_export_matches_the_fake_quantized_forward(tiny_hubert, batch):
    for config in (QATConfig(method="binary", bits=1), QATConfig(method="uniform", bits=2)):
        model = prepare_qat(tiny_hubert, config).eval()
        with torch.no_grad():
            for m in model.modules():  # move latents away from init so rounding matters
                if isinstance(m, FakeQuantLinear):
                    m.weight.add_(0.01 * torch.randn_like(m.weight))
            fake, _ = model(*batch)
            exported = export(model, config)
            real, _ = exported(*batch)
        assert any(isinstance(m, QuantizedLayer) for m in exported.modules())
        assert torch.allclose(fake[-1], real[-1], atol=1e-4)


# 2 batches per epoch: saved at an epoch's end, and inside one; a cosine schedule resumes where it was
@pytest.mark.parametrize("saved_at,schedule", [(10, "constant"), (11, "constant"), (11, "cosine")])
def test_distillation_loss_falls_resumes_and_exports(tiny_hubert, batch, tmp_path, saved_at, schedule):
    torch.manual_seed(0)
    wavs = [0.1 * torch.randn(6000) for _ in range(8)]
    config = QATConfig(method="uniform", bits=2, steps=30, batch_size=4, lr=1e-3, scale_lr=1e-2, crop_seconds=0.3,
                       lr_schedule=schedule)

    class Stop(Exception):
        pass

    from lightning.pytorch.callbacks import Callback

    class Cut(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 20:
                raise Stop

    # checkpoints are written every 100 steps; with 30 steps the resume starts over from step 0,
    # so write one by hand to exercise a mid-run resume
    class SaveAt(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == saved_at:
                trainer.save_checkpoint(tmp_path / "cut" / "last.ckpt")

    with pytest.raises(Stop):
        train_qat(tiny_hubert, wavs, config, tmp_path / "cut", accelerator="cpu", devices=1, progress=False,
                  callbacks=[SaveAt(), Cut()])
    resumed, summary = train_qat(tiny_hubert, wavs, config, tmp_path / "cut", accelerator="cpu", devices=1, progress=False)
    assert summary["steps"] == 30
    full, full_summary = train_qat(tiny_hubert, wavs, config, tmp_path / "full", accelerator="cpu", devices=1, progress=False)
    # the resumed run is the uninterrupted one: same codes, scales and the rest, bit for bit
    for (name, a), (other, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert name == other and torch.equal(a, b), name
    assert summary["final_loss"] == full_summary["final_loss"]
    assert full_summary["final_loss"] < full_summary["first_loss"]
    # the default logger's curves: every logged loss is one of the trace's (TensorBoard under the work folder)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "full" / "tb"))
    events.Reload()
    logged = [e.value for e in events.Scalars("loss")]
    tags = set(events.Tags()["scalars"])
    assert len(logged) >= 2 and "utterances_per_second" in tags and any(t.startswith("lr-Adam") for t in tags)
    assert all(any(abs(v - t) <= 1e-5 * max(1.0, abs(t)) for t in full_summary["loss_curve"]) for v in logged)
    rates = [(e.step, e.value) for e in events.Scalars(sorted(t for t in tags if t.startswith("lr-Adam"))[0])]
    # cosine: lr x (1 + cos(pi step / steps)) / 2 at each logged step, near zero at the end; constant: lr throughout
    want = [1e-3 * (0.5 * (1 + math.cos(math.pi * k / 30)) if schedule == "cosine" else 1.0) for k, _ in rates]
    assert [v for _, v in rates] == pytest.approx(want, rel=1e-4, abs=1e-9) and len(rates) >= 2
    path = save_packed(full, tmp_path / "qat.safetensors")
    with torch.no_grad():
        a, _ = full(*batch)
        b, _ = load_packed(path, device="cpu")(*batch)
    assert torch.allclose(a[-1], b[-1], atol=1e-2)  # the rest of the model is stored in fp16
    assert {m.bits for m in load_packed(path, device="cpu").modules() if isinstance(m, QuantizedLayer)} == {2}


def test_groups_zero_points_and_rotation_export_as_trained(tiny_hubert, batch):
    """Uniform QAT with groups, learned zero points and rotated inputs: the exported layers run
    exactly what the fake-quantized forward computed, with their rotation."""
    config = QATConfig(method="uniform", bits=2, group_size=16, symmetric=False, rotate=True)
    model = prepare_qat(tiny_hubert, config).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FakeQuantLinear):
                assert m.scale.shape[-1] == m.weight.shape[1] // 16 and m.zero is not None and m.rotation is not None
                m.weight.add_(0.01 * torch.randn_like(m.weight))
        fake, _ = model(*batch)
        exported = export(model, config)
        real, _ = exported(*batch)
    layers = [m for m in exported.modules() if isinstance(m, QuantizedLayer)]
    assert layers and all(m.group_size == 16 and m.rotation is not None for m in layers)
    assert torch.allclose(fake[-1], real[-1], atol=1e-4)


def test_a_rotated_fake_quant_layer_gives_the_same_product_with_the_rotation_on_either_side():
    """Many frames: the weight is rotated back once (W_r R); few: the inputs are rotated (R x).
    Both are the product the exported layer computes, and the scales' gradient is the same."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 8)
    grads = []
    for frames in (200, 3):  # 200 x 64 inputs > 8 x 64 weights: the weight side; 3 x 64: the input side
        layer = FakeQuantLinear(linear, "uniform", 2, group_size=16, symmetric=False, rotation=5)
        x = torch.randn(frames, 64)
        want = F.linear(rotate(x, 5), layer.quantized_weight(), layer.bias)
        out = layer(x)
        assert torch.allclose(out, want, atol=1e-5)
        out.square().sum().backward()
        ref = FakeQuantLinear(linear, "uniform", 2, group_size=16, symmetric=False, rotation=5)
        F.linear(rotate(x, 5), ref.quantized_weight(), ref.bias).square().sum().backward()
        grads.append(torch.allclose(layer.log_scale.grad, ref.log_scale.grad, atol=1e-4))
    assert grads == [True, True]


def test_qat_started_from_gptq_begins_at_gptq_s_model(tiny_hubert, batch):
    from upstream_quant.methods.gptq import GPTQConfig
    from upstream_quant.quantize import quantize

    torch.manual_seed(0)
    wavs = [torch.randn(8000) for _ in range(3)]
    for bits, asym, rot in ((2, True, True), (2, False, False), (1, True, True)):  # 1 bit: the centred binary
        start = quantize(tiny_hubert, GPTQConfig(bits=bits, group_size=16, symmetric=not asym, rotate=rot),
                         calibration=wavs, progress=False)
        config = QATConfig(method="uniform", bits=bits, group_size=16, symmetric=not asym, rotate=rot)
        exported = export(prepare_qat(tiny_hubert, config, start=start), config)
        ours = {n: m for n, m in exported.named_modules() if isinstance(m, QuantizedLayer)}
        theirs = {n: m for n, m in start.named_modules() if isinstance(m, QuantizedLayer)}
        assert set(ours) == set(theirs)
        for name, layer in ours.items():
            assert torch.equal(layer.codes, theirs[name].codes) and torch.equal(layer.weight, theirs[name].weight)
            assert layer.rotation == theirs[name].rotation
    with pytest.raises(ValueError, match="cannot start from a layer with zero points"):
        prepare_qat(tiny_hubert, QATConfig(method="uniform", bits=2, group_size=16),
                    start=quantize(tiny_hubert, GPTQConfig(bits=2, group_size=16, symmetric=False), calibration=wavs,
                                   progress=False))


@pytest.mark.parametrize("method,bits,asym", [("uniform", 2, True), ("uniform", 3, False), ("binary", 1, False)])
def test_kept_codes_learn_only_scales_with_the_exact_gradient_and_export_those_codes(tiny_hubert, batch, method, bits, asym):
    """learn="scales": the codes stay the start's whatever the scales become; the scale gradient
    is d/ds of (code - zero) * scale (not LSQ's, which is zero on the grid); export runs exactly
    the fake-quantized forward."""
    from upstream_quant.methods.gptq import GPTQConfig
    from upstream_quant.quantize import quantize

    torch.manual_seed(0)
    layer = FakeQuantLinear(nn.Linear(32, 4), method, bits, 16, not asym, keep_codes=True)
    before = layer._levels().clone()
    x = torch.randn(6, 32)
    layer(x).pow(2).sum().backward()
    assert layer.weight.grad is None and layer.log_scale.grad.abs().sum() > 0
    s = layer.scale.detach()  # the exact gradient of the output in the scales, by finite difference
    with torch.no_grad():  # a central difference, 1 % steps (the scales are rounded to fp16 in the forward)
        layer.log_scale[0, 0] += 1e-2
        up = layer(x).pow(2).sum()
        layer.log_scale[0, 0] -= 2e-2
        down = layer(x).pow(2).sum()
        layer.log_scale[0, 0] += 1e-2
    assert torch.allclose((up - down) / 2e-2, layer.log_scale.grad[0, 0], rtol=0.05)
    with torch.no_grad():
        layer.log_scale.add_(0.7)  # far enough that rounding the latent weights would change codes
    assert torch.equal(layer._levels(), before) and not torch.allclose(layer.scale, s)
    if method != "uniform" or not asym:
        return
    wavs = [torch.randn(8000) for _ in range(3)]
    start = quantize(tiny_hubert, GPTQConfig(bits=2, group_size=16, symmetric=False), calibration=wavs, progress=False)
    config = QATConfig(method="uniform", bits=2, group_size=16, symmetric=False, learn="scales")
    model = prepare_qat(tiny_hubert, config, start=start).eval()
    assert {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad} == {"log_scale", "zero"}
    floats = prepare_qat(tiny_hubert, QATConfig(method="uniform", bits=2, group_size=16, symmetric=False, learn="scales+float"),
                         start=start)
    learning = {n for n, p in floats.named_parameters() if p.requires_grad}
    fake = {n for n, m in floats.named_modules() if isinstance(m, FakeQuantLinear)}
    assert not {f"{n}.weight" for n in fake} & learning and {f"{n}.bias" for n in fake} <= learning
    assert any(n.endswith("norm.weight") for n in learning) and any(n.startswith("cnn") or "conv" in n for n in learning)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FakeQuantLinear):
                m.log_scale.add_(0.3 * torch.randn_like(m.log_scale))
        fake, _ = model(*batch)
        exported = export(model, config)
        real, _ = exported(*batch)
    assert torch.allclose(fake[-1], real[-1], atol=1e-4)
    theirs = {n: m for n, m in start.named_modules() if isinstance(m, QuantizedLayer)}
    for name, m in exported.named_modules():
        if isinstance(m, QuantizedLayer):
            assert torch.equal(m.codes, theirs[name].codes)


def test_a_window_pads_every_training_crop(tiny_hubert):
    from upstream_quant.methods.qat import _lightning_module

    module = _lightning_module()(prepare_qat(tiny_hubert, QATConfig(method="uniform", bits=2)), tiny_hubert,
                                 QATConfig(method="uniform", bits=2))
    seen = []
    module.terms = lambda wavs, lengths, targets, keys: seen.append((wavs.shape, lengths.tolist())) or {"x": (1.0, wavs.sum() * 0)}
    module.log = lambda *a, **k: None
    module.window = 9000
    module.training_step((torch.randn(2, 4000), torch.tensor([4000, 3000])), 0)
    assert seen == [(torch.Size([2, 9000]), [9000, 9000])]


def test_qat_tokens():
    from bench.suites import QuantSpec

    spec = QuantSpec.parse("qat:2:s200:g64:asym:rot:gptq")
    assert (spec.qat_steps, spec.group_size, spec.symmetric, spec.rotate, spec.init) == (200, 64, False, True, "gptq")
    assert spec.label == "qat2-s200-g64-asym-rot-from-gptq" and spec.calibrates  # steps named: not the default
    assert QuantSpec.parse("qat:2:s300").label == "qat2" and "init" not in QuantSpec.parse("qat:2").as_dict()
    cos = QuantSpec.parse("qat:2:s85:g64:cos")
    assert cos.lr_schedule == "cosine" and cos.label == "qat2-s85-g64-cos" and "lr_schedule" not in QuantSpec.parse("qat:2").as_dict()
    with pytest.raises(ValueError, match="lr_schedule = 'linear'"):
        QATConfig(method="uniform", bits=2, lr_schedule="linear")
    with pytest.raises(ValueError, match="1-bit GPTQ is a centred binary: add asym"):
        QuantSpec.parse("qat:1:gptq")
    with pytest.raises(ValueError, match="mixed start needs a width of 2 bits"):
        QuantSpec.parse("qat:1:asym:mixed1.5b")
    centred = QuantSpec.parse("qat:1:g64:asym:rot:gptq:dec:scales")
    assert centred.label == "qat1-g64-asym-rot-from-gptq-dec-scales" and centred.calibrates
    with pytest.raises(ValueError, match="uniform at 1 bit with zero points"):
        QATConfig(method="uniform", bits=1)  # a symmetric 1-bit range has a level at zero: refused
    assert QATConfig(method="uniform", bits=1, symmetric=False).bits == 1


def test_qat_from_a_mixed_precision_start_trains_each_layer_at_its_width(tiny_hubert, batch):
    """``mixedXb``: mixed precision's model (GPTQ at each layer's width) is the start; every
    layer keeps its width and, before training, its codes; a one-width start at another width is refused."""
    from bench.suites import QuantSpec
    from upstream_quant.methods.gptq import GPTQConfig
    from upstream_quant.methods.mixed import mixed_precision
    from upstream_quant.quantize import quantize

    torch.manual_seed(0)
    wavs = [torch.randn(8000) for _ in range(3)]
    start, report = mixed_precision(tiny_hubert, wavs, None, budget_bits=2.5, rounding="gptq", group_size=16,
                                    symmetric=False, layer_coverage="transformer")
    theirs = {n: m for n, m in start.named_modules() if isinstance(m, QuantizedLayer)}
    assert len({m.bits for m in theirs.values()}) > 1
    config = QATConfig(method="uniform", bits=2, group_size=16, symmetric=False, learn="scales")
    model = prepare_qat(tiny_hubert, config, start=start)
    assert {n: m.bits for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)} == {n: m.bits for n, m in theirs.items()}
    for name, layer in export(model, config).named_modules():
        if isinstance(layer, QuantizedLayer):
            assert layer.bits == theirs[name].bits and torch.equal(layer.codes, theirs[name].codes)
    with pytest.raises(ValueError, match="QAT at 2 bits cannot start from a 3-bit model"):
        prepare_qat(tiny_hubert, config, start=quantize(tiny_hubert, GPTQConfig(bits=3, group_size=16, symmetric=False),
                                                        calibration=wavs, progress=False))
    spec = QuantSpec.parse("qat:2:g64:asym:mixed2.25b:dec:scales")
    assert spec.init == "mixed" and spec.budget_bits == 2.25 and spec.label == "qat2-g64-asym-from-mixed2.25b-dec-scales"
    for bad in ("qat:2:mixed1.5b", "qat:1:mixed2b"):
        with pytest.raises(ValueError):
            QuantSpec.parse(bad)


def test_qat_from_block_reconstruction_starts_from_its_model(tiny_hubert, tmp_path):
    """``reconN``: block reconstruction's model (N steps a block, the same width, groups and zero
    points, on the run's calibration audio) is the start: with next to nothing learning (rates of
    1e-12, codes kept) QAT exports its codes and scales, which are not GPTQ's; 1 bit (which recon
    has not) is refused in the token."""
    from bench.suites import QuantSpec
    from upstream_quant.methods import METHODS, BuildContext
    from upstream_quant.methods.gptq import GPTQConfig
    from upstream_quant.methods.recon import ReconConfig
    from upstream_quant.quantize import quantize

    torch.manual_seed(0)
    wavs = [0.1 * torch.randn(6000) for _ in range(4)]
    spec = QuantSpec.parse("qat:2:s2:b2:g16:asym:recon3:scales")
    assert (spec.init, spec.steps, spec.label, spec.calibrates) == ("recon", 3, "qat2-s2-g16-asym-from-recon3-scales", True)
    context = BuildContext(calibration=lambda group: wavs, unlabelled_files=lambda hours, group: wavs, work_dir=tmp_path, device="cpu",
                           devices=1, seed=0, options={"lr": 1e-12, "scale_lr": 1e-12, "crop_seconds": 0.3}, progress=False)
    model, info = METHODS["qat"].build(tiny_hubert, spec, context)
    assert info["qat"]["recon_seconds"] > 0 and info["qat"]["steps"] == 2
    recon = quantize(tiny_hubert, ReconConfig(bits=2, steps=3, group_size=16, symmetric=False), calibration=wavs, progress=False)
    theirs = {n: m for n, m in recon.named_modules() if isinstance(m, QuantizedLayer)}
    gptq = quantize(tiny_hubert, GPTQConfig(bits=2, group_size=16, symmetric=False), calibration=wavs, progress=False)
    assert any(not torch.allclose(m.scale, theirs[n].scale, rtol=1e-4)
               for n, m in gptq.named_modules() if isinstance(m, QuantizedLayer))  # so GPTQ's start would fail below
    ours = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    assert theirs.keys() == ours.keys() and theirs
    for name, layer in ours.items():
        assert torch.equal(layer.codes, theirs[name].codes), name
        assert torch.allclose(layer.scale, theirs[name].scale, rtol=1e-6), name
    with pytest.raises(ValueError, match="recon start needs a width of 2 bits or more"):
        QuantSpec.parse("qat:1:asym:recon10")


def test_qat_calib_group_is_both_its_starts_audio_and_its_training_audio(tiny_hubert, tmp_path):
    """``calib=GROUP`` (mixed precision's grammar): GPTQ's start is calibrated on, and QAT trains
    on, that group's audio, not the run's; the label names it; without it nothing changes."""
    from bench.suites import QuantSpec
    from upstream_quant.methods import METHODS, BuildContext

    torch.manual_seed(0)
    wavs = [0.1 * torch.randn(6000) for _ in range(4)]
    asked = []
    context = BuildContext(calibration=lambda group: asked.append(("calibration", group)) or wavs,
                           unlabelled_files=lambda hours, group: asked.append(("train", group)) or wavs, work_dir=tmp_path,
                           device="cpu", devices=1, seed=0, options={"crop_seconds": 0.3}, progress=False)
    spec = QuantSpec.parse("qat:2:s1:b2:g16:asym:gptq:scales:calib=more")
    assert (spec.calib, spec.label) == ("more", "qat2-s1-g16-asym-from-gptq-scales-calib-more")
    assert QuantSpec.parse("qat:2:s1:b2:g16:asym:gptq:scales").label == "qat2-s1-g16-asym-from-gptq-scales"
    METHODS["qat"].build(tiny_hubert, spec, context)
    assert asked == [("calibration", "more"), ("train", "more")]
    with pytest.raises(ValueError, match="unknown option 'calib='"):
        QuantSpec.parse("qat:2:calib=")

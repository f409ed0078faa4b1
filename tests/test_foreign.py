"""quantize() through the public API alone on architectures that are not ours: transformers'
WhisperEncoder (log-mel input) and Wav2Vec2Model (waveform input), small configs, random weights;
and block-wise reconstruction on the foreign encoder."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from upstream_quant import compat
from upstream_quant.methods.binary import BinaryConfig
from upstream_quant.methods.gptq import GPTQConfig
from upstream_quant.qweight import QuantizedLayer
from upstream_quant.quantize import quantize
from upstream_quant.methods.recon import ReconConfig
from upstream_quant.methods.uniform import UniformConfig

compat.ensure_torchaudio()  # transformers imports torchaudio when it is installed
from transformers import Wav2Vec2Config, Wav2Vec2Model, WhisperConfig  # noqa: E402
from transformers.models.whisper.modeling_whisper import WhisperEncoder  # noqa: E402

MELS, FRAMES = 16, 100


@pytest.fixture(scope="module")
def whisper():
    torch.manual_seed(0)
    config = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                           num_mel_bins=MELS, max_source_positions=FRAMES // 2)
    return WhisperEncoder(config).eval()


def mels(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, MELS, FRAMES, generator=g) for _ in range(n)]


def rel_error(model, ref_model, xs) -> float:
    with torch.no_grad():
        num = sum(float(((model(x).last_hidden_state - ref_model(x).last_hidden_state) ** 2).sum()) for x in xs)
        den = sum(float((ref_model(x).last_hidden_state ** 2).sum()) for x in xs)
    return num / den


def linears(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def test_whisper_encoder_quantized_by_rtn_gptq_and_binary_through_the_public_api(whisper):
    calib, held_out = mels(8, seed=1), mels(4, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the blocks must chain: no fallback warning
        gptq = quantize(whisper, GPTQConfig(bits=3, targets=(nn.Linear,)), calibration=calib, progress=False)
    rtn = quantize(whisper, UniformConfig(bits=3, targets=("layers.*",)), progress=False)
    binary = quantize(whisper, BinaryConfig(targets=("layers.*.fc1", "layers.*.fc2")), progress=False)
    assert not linears(gptq) and not linears(rtn)  # every Linear (all inside the layers) quantized
    assert isinstance(gptq.conv1, nn.Conv1d)  # chosen by type: Linear only
    assert sorted(n for n, m in binary.named_modules() if isinstance(m, QuantizedLayer)) == \
        [f"layers.{i}.{f}" for i in range(2) for f in ("fc1", "fc2")]
    e_gptq, e_rtn = rel_error(gptq, whisper, held_out), rel_error(rtn, whisper, held_out)
    assert e_gptq < 0.7 * e_rtn, (e_gptq, e_rtn)  # on inputs it was not calibrated on
    assert torch.isfinite(binary(held_out[0]).last_hidden_state).all()


def test_wav2vec2_takes_waveform_batches_and_filter_fn():
    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                         conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3),
                                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)).eval()
    g = torch.Generator().manual_seed(3)
    waves = [torch.randn(1, 4000 + 400 * i, generator=g) for i in range(6)]
    q = quantize(model, GPTQConfig(bits=4), calibration=waves, progress=False,
                 filter_fn=lambda m, fqn: fqn.startswith("encoder.layers.") and isinstance(m, nn.Linear))
    chosen = sorted(n for n, m in q.named_modules() if isinstance(m, QuantizedLayer))
    assert len(chosen) == 12 and all(n.startswith("encoder.layers.") for n in chosen)
    everything = quantize(model, UniformConfig(bits=8, targets=("*",)), progress=False)  # convs, weight-normed one included
    assert not [n for n, m in everything.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    with torch.no_grad():
        ref, out = model(waves[0]).last_hidden_state, everything(waves[0]).last_hidden_state
    assert float(torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0)) > 0.99


def test_block_reconstruction_lowers_each_blocks_error_and_never_keeps_a_worse_one(whisper):
    calib, held_out = mels(8, seed=1), mels(4, seed=2)
    config = ReconConfig(bits=2, group_size=32, steps=60, targets=(nn.Linear,))
    recon = quantize(whisper, config, calibration=calib, progress=False)
    again = quantize(whisper, config, calibration=calib, progress=False)
    blocks = recon.quantization["blocks"]
    assert [b["block"] for b in blocks] == ["layers.0", "layers.1"]
    assert all(b["kept"] and b["recon_error"] < 0.9 * b["gptq_error"] for b in blocks), blocks
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(
        (m for m in recon.modules() if isinstance(m, QuantizedLayer)), (m for m in again.modules() if isinstance(m, QuantizedLayer))))
    gptq = quantize(whisper, GPTQConfig(bits=2, group_size=32, targets=(nn.Linear,)), calibration=calib, progress=False)
    assert rel_error(recon, whisper, held_out) < rel_error(gptq, whisper, held_out)
    codes = [m.codes for m in recon.modules() if isinstance(m, QuantizedLayer)]
    assert all(int(c.max()) <= 3 for c in codes) and {m.method for m in recon.modules() if isinstance(m, QuantizedLayer)} == {"recon"}
    untrained = quantize(whisper, ReconConfig(bits=2, group_size=32, steps=0, targets=(nn.Linear,)), calibration=calib,
                         progress=False)
    assert not any(b["kept"] for b in untrained.quantization["blocks"])  # no gain: GPTQ's layers kept
    assert {m.method for m in untrained.modules() if isinstance(m, QuantizedLayer)} == {"gptq"}


def test_block_reconstruction_refuses_a_model_without_blocks():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with pytest.raises(ValueError, match="list of blocks"):
        quantize(net, ReconConfig(bits=2, targets=(nn.Linear,)), calibration=[torch.randn(4, 8)], progress=False)


def test_an_interrupted_reconstruction_resumes_from_its_next_block_to_the_same_model(whisper, tmp_path, monkeypatch):
    """Killed after block 0 (here: block 1's refine step fails), the same call continues from
    block 1 with block 0 loaded, not recomputed, and ends with the uninterrupted model, bit for bit."""
    from upstream_quant import quantize as q

    calib = mels(8, seed=1)
    config = ReconConfig(bits=2, group_size=32, steps=30, targets=(nn.Linear,))
    whole = quantize(whisper, config, calibration=calib, progress=False)
    real = q.REFINERS[ReconConfig]
    calls = []

    def dies_at_block_1(cfg, block, path, *args, **kwargs):
        calls.append(path)
        if path == "layers.1":
            raise KeyboardInterrupt("killed")
        return real(cfg, block, path, *args, **kwargs)

    monkeypatch.setitem(q.REFINERS, ReconConfig, dies_at_block_1)
    with pytest.raises(KeyboardInterrupt):
        quantize(whisper, config, calibration=calib, progress=False, resume_dir=tmp_path / "keep")
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["block0.pt"]  # nothing half-written
    calls.clear()
    monkeypatch.setitem(q.REFINERS, ReconConfig, lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    resumed = quantize(whisper, config, calibration=calib, progress=False, resume_dir=tmp_path / "keep")
    assert calls == ["layers.1"]  # block 0 came from its file
    assert resumed.quantization["blocks"] == whole.quantization["blocks"]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

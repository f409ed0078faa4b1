"""Whisper tiny.en encoder (embedded weights), its CTranslate2 reader, and FBANK."""

import shutil

import numpy as np
import pytest
import torch

from upstream_quant import compat
from upstream_quant.upstreams.fbank import FbankUpstream, deltas
from upstream_quant.loading import load_upstream
from upstream_quant.packed import load_packed, save_packed
from upstream_quant.qweight import QuantizedLayer
from upstream_quant.quantize import quantize
from upstream_quant.methods.uniform import UniformConfig
from upstream_quant.upstreams.whisper import (
    WeightsFileError, build_whisper, load_ctranslate2_whisper, load_whisper_checkpoint, save_whisper,
    sinusoids, slaney_mel_filters, wheel_model_path,
)


@pytest.fixture(scope="module")
def whisper():
    return load_upstream("whisper_tiny_en", device="cpu")


@pytest.fixture(scope="module")
def speechlike():
    """Two utterances of different length with speech-like spectra (harmonics + noise)."""
    rng = np.random.default_rng(0)
    out = []
    for seconds, f0 in ((2.0, 120.0), (1.3, 210.0)):
        t = np.arange(int(seconds * 16000)) / 16000
        wav = sum(np.sin(2 * np.pi * f0 * k * t * (1 + 0.05 * np.sin(3 * t))) / k for k in range(1, 12))
        wav = wav * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t)) + 0.01 * rng.standard_normal(len(t))
        out.append(torch.tensor(0.1 * wav, dtype=torch.float32))
    lens = torch.tensor([len(w) for w in out])
    return torch.nn.utils.rnn.pad_sequence(out, batch_first=True), lens


def test_matches_transformers_whisper_encoder(whisper, speechlike):
    """Same weights in transformers' WhisperEncoder, same features (padded to 30 s as Whisper is)."""
    compat.ensure_torchaudio()
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.audio_utils import mel_filter_bank
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    ref_filters = mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
                                  sampling_rate=16000, norm="slaney", mel_scale="slaney")
    assert np.allclose(ref_filters.T, slaney_mel_filters().numpy(), atol=1e-7)
    cfg = WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                        num_mel_bins=80, max_source_positions=1500)
    ref = WhisperEncoder(cfg).eval()
    state = dict(whisper.state_dict())
    state["embed_positions.weight"] = whisper.embed_positions
    ref.load_state_dict(state)
    wavs, lens = speechlike
    feats = WhisperFeatureExtractor(feature_size=80)([w[:n].numpy() for w, n in zip(wavs, lens)],
                                                     sampling_rate=16000, return_tensors="pt").input_features
    padded = build_whisper({**whisper.architecture()["config"], "pad_to_30s": True})
    padded.load_state_dict(whisper.state_dict())
    with torch.no_grad():
        expected = ref(feats, output_hidden_states=True).hidden_states
        states, lengths = padded.eval()(wavs, lens)
    assert len(states) == len(expected) == 5
    for ours, theirs in zip(states, expected):
        for i, n in enumerate(lengths[0].tolist()):
            assert torch.allclose(ours[i, :n], theirs[i, :n], atol=2e-4), (ours[i, :n] - theirs[i, :n]).abs().max()


def _looks_trained(model) -> bool:
    """Training moves every LayerNorm off its init (gain 1, bias 0) and gives weight matrices a
    dominant direction (top singular value over the median: ~4.8 trained, ~1.6 at init)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    moved = all(float((m.weight.detach() - 1).abs().mean()) > 0.1 and float(m.bias.detach().abs().mean()) > 0.1 for m in norms)
    sv = torch.linalg.svdvals(model.layers[0].fc1.weight.detach())
    return bool(norms) and moved and float(sv[0] / sv.median()) > 3


def test_embedded_weights_are_real_and_positions_are_whispers(whisper):
    assert sum(p.numel() for p in whisper.parameters()) == 7_632_384
    assert torch.allclose(whisper.embed_positions, sinusoids(1500, 384), atol=1e-3)  # stored as fp16
    assert _looks_trained(whisper)
    assert not _looks_trained(load_upstream("whisper_tiny_en", random_init=True, device="cpu"))  # the check discriminates


def test_own_length_mode_is_batch_invariant(whisper, speechlike):
    wavs, lens = speechlike
    with torch.no_grad():
        batch, blens = whisper(wavs, lens)
        alone, alens = whisper(wavs[1:, : lens[1]], lens[1:])
    n = int(alens[0][0])
    assert blens[0].tolist() == [int(x) for x in (lens // 160 + 1) // 2] and n == int(blens[0][1])
    for b, a in zip(batch, alone):
        assert b.shape[1] == int(lens[0] // 160 + 1) // 2
        assert torch.allclose(b[1, :n], a[0, :n], atol=1e-4)


def test_tampered_or_truncated_file_is_refused(tmp_path):
    bad = tmp_path / "model.bin"
    shutil.copy(wheel_model_path(), bad)
    with open(bad, "r+b") as fh:
        fh.seek(10_000_000)
        byte = fh.read(1)
        fh.seek(10_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WeightsFileError, match="sha256 .* differs from the pinned"):
        load_ctranslate2_whisper(bad)
    bad.write_bytes(wheel_model_path().read_bytes()[:5000])
    with pytest.raises(WeightsFileError, match="truncated"):
        load_ctranslate2_whisper(bad, expected_sha256=None)
    bad.write_bytes(b"hello")
    with pytest.raises(WeightsFileError, match="neither"):
        load_whisper_checkpoint(bad)


def test_save_and_reload_fp16(whisper, speechlike, tmp_path):
    path = save_whisper(whisper, tmp_path / "w.safetensors", metadata={"note": "test"})
    again = load_upstream("whisper_tiny_en", checkpoint=path, device="cpu")
    wavs, lens = speechlike
    with torch.no_grad():
        a, _ = whisper(wavs, lens)
        b, _ = again(wavs, lens)
    # the embedded weights are fp16 values already, so an fp16 file holds them exactly
    assert all(torch.equal(t, t.half().float()) for t in whisper.state_dict().values() if t.is_floating_point())
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_quantizers_apply_and_pack(whisper, speechlike, tmp_path):
    q = quantize(whisper, UniformConfig(bits=4))
    wavs, lens = speechlike
    with torch.no_grad():
        ref, _ = whisper(wavs, lens)
        out, _ = q(wavs, lens)
    # every layer is 4-bit round-to-nearest on its row's symmetric grid (levels -8..7, scale
    # max|w| / 7.5): codes 0..15, the weight used is scale x (code - zero), and no weight moved by
    # more than half a step, plus the fp16 rounding of the stored scale over at most 8 steps
    layers = {n: m for n, m in q.named_modules() if isinstance(m, QuantizedLayer)}
    assert len(layers) == 4 * 6
    for name, m in layers.items():
        original = whisper.get_submodule(name).weight
        assert m.codes.min() >= 0 and m.codes.max() == 15
        assert torch.allclose(m.weight, m.scale * (m.codes.float() - m.zero), atol=1e-6)
        assert ((m.weight - original).abs() / m.scale).max() <= 0.5 + 8 * 2**-11, name
    cos = torch.nn.functional.cosine_similarity(ref[-1].flatten(), out[-1].flatten(), dim=0)
    assert 0.8 < cos and not torch.equal(ref[-1], out[-1])  # measured 0.870 on these inputs
    path = save_packed(q, tmp_path / "w4.safetensors")
    with torch.no_grad():
        back, _ = load_packed(path, device="cpu")(wavs, lens)
    assert torch.allclose(back[-1], out[-1], atol=1e-4)


def test_fbank_shapes_and_deltas(speechlike):
    fb = load_upstream("fbank", device="cpu")
    assert isinstance(fb, FbankUpstream) and sum(p.numel() for p in fb.parameters()) == 0
    wavs, lens = speechlike
    states, lengths = fb(wavs, lens)
    assert states[0].shape == (2, int(lens[0]) // 160, 240) and lengths[0].tolist() == (lens // 160).tolist()
    n = int(lengths[0][1])
    assert torch.allclose(states[0][1, :n].mean(0), torch.zeros(240), atol=1e-4)
    ramp = torch.arange(20.0)[None]
    assert torch.allclose(deltas(ramp)[0, 2:-2], torch.ones(16))

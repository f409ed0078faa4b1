"""Distillation through a model's own text decoder (upstream_quant.decoder_loss): pseudo-labels,
the KL, and QAT trained with it, on a tiny random Whisper encoder and decoder made here."""

import dataclasses

import pytest
import torch

from upstream_quant.decoder_loss import decoder_kl, forcing_inputs, text_decoder
from upstream_quant.methods.qat import FakeQuantLinear, QATConfig, train_qat
from upstream_quant.upstreams.whisper import build_whisper
from upstream_quant.upstreams.whisper_text import EOT, PROMPT, WhisperTextDecoder

DIM = 32


def _decoder() -> WhisperTextDecoder:
    """Random weights, Whisper's special token ids (so a vocabulary past the timestamps), 24
    positions: greedy transcripts stop at 22 tokens. Cross-attention scaled up, so that what it
    predicts depends on the encoding as a trained decoder's does (at default init it barely does)."""
    torch.manual_seed(1)
    decoder = WhisperTextDecoder(vocab=50400, dim=DIM, layers=1, heads=2, ffn=64, positions=24).eval().requires_grad_(False)
    for layer in decoder.layers:
        layer.cross_attn.v_proj.weight.mul_(5)
        layer.cross_attn.out_proj.weight.mul_(20)
    return decoder


def _encoder(decoder):
    torch.manual_seed(0)
    model = build_whisper({"layers": 2, "d_model": DIM, "heads": 2, "ffn": 64}, "tiny").eval()
    model.text_decoder = lambda: decoder  # as whisper_tiny_en's own decoder comes with it
    return model


def test_pseudo_labels_score_the_transcript_and_its_end_and_kl_is_zero_only_for_the_same_encoding():
    decoder = _decoder()
    torch.manual_seed(2)
    teacher = torch.randn(3, 10, DIM)
    ids = decoder.greedy(teacher)
    tokens, mask = forcing_inputs(ids)
    assert tokens[:, : len(PROMPT)].tolist() == [list(PROMPT)] * 3
    for row, m, want in zip(tokens.tolist(), mask, ids):
        assert row[len(PROMPT): len(PROMPT) + len(want)] == want and set(row[len(PROMPT) + len(want):]) <= {EOT}
        assert int(m.sum()) == len(want) + 1 and bool(m[len(PROMPT) - 1])  # each token and the end after it
    same = decoder_kl(decoder, teacher.clone(), teacher, tokens, mask)
    assert abs(float(same)) < 1e-5
    student = (teacher + 0.5 * torch.randn_like(teacher)).requires_grad_(True)
    kl = decoder_kl(decoder, student, teacher, tokens, mask)
    kl.backward()
    assert float(kl.detach()) > 0.1 and student.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in decoder.parameters())  # the decoder stays frozen


def test_qat_through_the_decoder_lowers_its_kl_and_records_the_loss(tmp_path):
    decoder = _decoder()
    teacher = _encoder(decoder)
    gen = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(4000 + 500 * i, generator=gen) for i in range(4)]
    window = 8000
    config = QATConfig(method="uniform", bits=2, steps=15, batch_size=4, lr=1e-3, scale_lr=1e-3, crop_seconds=1.0,
                       window=window, loss="decoder")

    def kl(model) -> float:
        x = torch.stack([torch.nn.functional.pad(w, (0, window - w.numel())) for w in wavs])
        n = torch.full((4,), window)
        with torch.no_grad():
            t = teacher(x, n)[0][-1]
            tokens, mask = forcing_inputs(decoder.greedy(t))
            return float(decoder_kl(decoder, model(x, n)[0][-1], t, tokens, mask))

    from upstream_quant.methods.qat import prepare_qat

    before = kl(prepare_qat(teacher, config).eval())
    model, summary = train_qat(teacher, wavs, config, tmp_path / "q", accelerator="cpu", devices=1, progress=False,
                               num_workers=0)
    assert model.quantization["config"]["loss"] == "decoder"
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())
    after = kl(model)
    assert after < 0.7 * before


def test_a_decoder_loss_on_a_model_without_a_decoder_is_refused_before_any_work(tiny_hubert, tmp_path):
    with pytest.raises(ValueError, match="own text decoder.*has none"):
        train_qat(tiny_hubert, [torch.zeros(4000)], QATConfig(method="binary", bits=1, loss="decoder"), tmp_path / "w",
                  accelerator="cpu", devices=1, progress=False)
    assert not (tmp_path / "w").exists()
    with pytest.raises(ValueError, match="QATConfig.loss = 'logits'"):
        QATConfig(loss="logits")
    assert text_decoder(_encoder(_decoder())) is not None
    with pytest.raises(ValueError, match="pack_seconds = 40.0: longer than the input window"):
        QATConfig(method="binary", bits=1, loss="decoder", pack_seconds=40.0, window=480000)


def test_the_dec_token():
    from bench.suites import QuantSpec

    spec = QuantSpec.parse("qat:2:s40:g64:asym:rot:gptq:dec:scales")
    assert spec.loss == "decoder" and spec.learn == "scales" and spec.label == "qat2-s40-g64-asym-rot-from-gptq-dec-scales"
    plain = QuantSpec.parse("qat:2:s40").as_dict()
    assert "loss" not in plain and "learn" not in plain  # rows stored before the options keep their hash
    with pytest.raises(ValueError, match="unknown option 'kl'"):
        QuantSpec.parse("qat:2:kl")
    packed = QuantSpec.parse("qat:2:b4:dec:scales:p28")
    assert packed.pack_seconds == 28.0 and packed.batch_size == 4 and packed.label == "qat2-dec-scales-p28"
    assert QATConfig(learn="scales").scale_lr == 5e-3 and QATConfig().scale_lr == 1e-3
    assert QuantSpec.parse("qat:2:scalesfloat").learn == "scales+float" and QuantSpec.parse("qat:2:scalesfloat").label == "qat2-scalesfloat"
    fixed = QuantSpec.parse("qat:2:s118:b4:dec:scales:p28:fixed")
    assert fixed.fixed_items is True and fixed.label == "qat2-s118-dec-scales-p28-fixed"
    assert "fixed_items" not in packed.as_dict()  # rows stored before the option keep their hash


def test_fixed_items_are_transcribed_once_and_a_resumed_run_is_the_uninterrupted_one(tmp_path):
    """``fixed_items``: packs the same every epoch, so the teacher's greedy transcripts are made in
    the first epoch only; they travel in checkpoints, so a run resumed in a later epoch forces the
    same tokens and ends bit for bit where an uninterrupted one does."""
    from lightning.pytorch.callbacks import Callback

    decoder = _decoder()
    teacher = _encoder(decoder)
    transcribed = []
    greedy = decoder.greedy
    decoder.greedy = lambda encoded, *a, **k: transcribed.append(encoded.shape[0]) or greedy(encoded, *a, **k)
    gen = torch.Generator().manual_seed(0)
    wavs = [0.1 * torch.randn(1500 + 300 * i, generator=gen) for i in range(6)]
    # 6 packed items, 2 a step: 3 steps an epoch, 9 steps = 3 epochs
    config = QATConfig(method="uniform", bits=2, steps=9, batch_size=2, lr=1e-3, scale_lr=1e-2, window=8000,
                       loss="decoder", pack_seconds=0.45, fixed_items=True, learn="scales")

    class Stop(Exception):
        pass

    class Cut(Callback):  # saved inside the second epoch, killed two steps later
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 4:
                trainer.save_checkpoint(tmp_path / "cut" / "last.ckpt")
            if trainer.global_step == 6:
                raise Stop

    run = dict(accelerator="cpu", devices=1, progress=False, num_workers=0)
    full, summary = train_qat(teacher, wavs, config, tmp_path / "full", **run)
    assert sum(transcribed) == 6 and summary["steps"] == 9  # each item once, in the first epoch
    transcribed.clear()
    with pytest.raises(Stop):
        train_qat(teacher, wavs, config, tmp_path / "cut", callbacks=[Cut()], **run)
    transcribed.clear()
    resumed, _ = train_qat(teacher, wavs, config, tmp_path / "cut", **run)
    assert transcribed == []  # the checkpoint's transcripts
    for (name, a), (other, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert name == other and torch.equal(a, b), name
    drawn = dataclasses.replace(config, fixed_items=False)
    transcribed.clear()
    train_qat(teacher, wavs, drawn, tmp_path / "drawn", **run)
    assert sum(transcribed) == 18  # packs drawn afresh: every item of every step transcribed

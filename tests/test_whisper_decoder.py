"""Whisper tiny.en's own decoder: checked against transformers, and end-to-end ASR with it."""

import shutil
import subprocess

import pytest
import torch

from downstream.text import number_words, spoken
from upstream_quant import compat
from upstream_quant.upstreams.whisper import load_text_decoder
from upstream_quant.upstreams.whisper_text import PROMPT


@pytest.fixture(scope="module")
def decoder():
    return load_text_decoder()


def _hf_decoder_state(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' names for our decoder's tensors (the test's own mapping, written from
    transformers' module names, so a naming slip on our side cannot cancel out)."""
    out = {"model.decoder.embed_tokens.weight": ours["embed_tokens.weight"],
           "model.decoder.embed_positions.weight": ours["embed_positions"],
           "model.decoder.layer_norm.weight": ours["layer_norm.weight"], "model.decoder.layer_norm.bias": ours["layer_norm.bias"]}
    names = {"self_attn_norm": "self_attn_layer_norm", "cross_attn_norm": "encoder_attn_layer_norm", "ffn_norm": "final_layer_norm",
             "self_attn.q_proj": "self_attn.q_proj", "self_attn.k_proj": "self_attn.k_proj", "self_attn.v_proj": "self_attn.v_proj",
             "self_attn.out_proj": "self_attn.out_proj", "cross_attn.q_proj": "encoder_attn.q_proj",
             "cross_attn.k_proj": "encoder_attn.k_proj", "cross_attn.v_proj": "encoder_attn.v_proj",
             "cross_attn.out_proj": "encoder_attn.out_proj", "fc1": "fc1", "fc2": "fc2"}
    for key, value in ours.items():
        if key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            module, param = rest.rsplit(".", 1)
            out[f"model.decoder.layers.{i}.{names[module]}.{param}"] = value
    return out


def test_decoder_logits_equal_transformers_whisper_with_the_same_weights(decoder):
    compat.ensure_torchaudio()
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=51864, d_model=384, encoder_layers=1, decoder_layers=4, encoder_attention_heads=6,
                        decoder_attention_heads=6, encoder_ffn_dim=64, decoder_ffn_dim=1536, max_target_positions=448)
    hf = WhisperForConditionalGeneration(cfg).eval()
    missing, _ = hf.load_state_dict(_hf_decoder_state(decoder.state_dict()), strict=False)
    assert not [k for k in missing if k.startswith("model.decoder.")]
    torch.manual_seed(0)
    encoded = torch.randn(2, 1500, 384)
    tokens = torch.tensor([[*PROMPT, 383, 1468, 582, 6807], [*PROMPT, 317, 1402, 8848, 13]])
    with torch.no_grad():
        theirs = hf(encoder_outputs=(encoded,), decoder_input_ids=tokens).logits
        ours = decoder.logits(tokens, encoded)
    assert (ours - theirs).abs().max() < 1e-3 * theirs.abs().max()
    # the cached greedy loop takes, step by step, the argmax of the uncached logits (suppressed tokens aside)
    ids = decoder.greedy(encoded[:1], max_tokens=6)[0]
    path = torch.tensor([[*PROMPT, *ids]])
    with torch.no_grad():
        logits = decoder.logits(path, encoded[:1])[0, len(PROMPT) - 1 : -1]
    logits[:, decoder.suppress] = -torch.inf
    logits[:, 50363:] = -torch.inf
    logits[0, decoder.suppress_at_begin] = -torch.inf
    assert logits.argmax(-1).tolist() == ids


def test_written_numbers_are_scored_as_spoken_words():
    assert number_words(0) == "ZERO" and number_words(42) == "FORTY TWO" and number_words(300) == "THREE HUNDRED"
    assert number_words(1905) == "ONE THOUSAND NINE HUNDRED FIVE"
    assert spoken("The old man, 42, walked 1,905 km - it's Mr. Smith's dog!") == \
        "THE OLD MAN FORTY TWO WALKED ONE THOUSAND NINE HUNDRED FIVE KM IT'S MR SMITH'S DOG"


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite (Debian package) makes the test speech")
def test_end_to_end_asr_transcribes_read_speech_with_whisper_s_own_decoder(tmp_path):
    """A flite sentence in LibriSpeech layout, decoded end to end: the fp model nearly right, the
    task refuses an upstream without a decoder (the distilled student)."""
    import soundfile as sf

    from downstream.datamodule import DataConfig
    from downstream.tasks import preset
    from downstream.train import train_and_evaluate
    from upstream_quant.loading import load_upstream

    folder = tmp_path / "c" / "test" / "1" / "1"
    folder.mkdir(parents=True)
    lines = []
    for i, sentence in enumerate(("The old man walked slowly down the quiet road.", "She opened the window to let in the air.")):
        wav = tmp_path / f"{i}.wav"
        subprocess.run(["flite", "-voice", "slt", "-t", sentence, "-o", str(wav)], check=True)
        audio, rate = sf.read(wav, dtype="float32")
        if rate != 16000:
            import scipy.signal

            audio = scipy.signal.resample_poly(audio, 16000, rate).astype("float32")
        sf.write(folder / f"1-1-{i:04d}.flac", audio, 16000)
        lines.append(f"1-1-{i:04d} {sentence.upper().rstrip('.')}\n")
    (folder / "1-1.trans.txt").write_text("".join(lines))
    data = DataConfig(layout="librispeech", root=str(tmp_path / "c"), train=(), dev=(), test=("test",))
    result = train_and_evaluate(load_upstream("whisper_tiny_en", device="cpu"), preset("e2e_asr"), data, tmp_path / "w",
                                device="cpu", progress=False)
    assert result["metrics"]["test_wer"] <= 20, result["metrics"]
    assert len(result["per_utterance"]["ids"]) == 2
    with pytest.raises(ValueError, match="own output layer"):
        train_and_evaluate(load_upstream("distil_whisper_tiny_en", device="cpu"), preset("e2e_asr"), data, tmp_path / "v",
                           device="cpu", progress=False)

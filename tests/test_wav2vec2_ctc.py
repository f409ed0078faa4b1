"""Fine-tuned wav2vec 2.0 (CTC) models and transformers folders: loaded into our upstream, they
compute what transformers' own implementation computes, and keep their letter output through
packed files. Tiny random models made here."""

import json

import pytest
import torch

from upstream_quant import compat, load_upstream
from upstream_quant.checkpoints import CheckpointError
from upstream_quant.packed import load_packed, save_packed
from upstream_quant.upstreams.wav2vec2 import CTCOutput, build_wav2vec2

LETTERS = ["|", "E", "T", "A", "O"]
TINY_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
               conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
               hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0,
               layerdrop=0.0, vocab_size=4 + len(LETTERS), pad_token_id=0)


def _wav(seconds: float = 0.5) -> torch.Tensor:
    return 0.1 * torch.randn(1, int(16000 * seconds), generator=torch.Generator().manual_seed(0))


def _hf_folder(tmp_path, ctc: bool):
    compat.ensure_torchaudio()
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(**TINY_HF)
    model = (Wav2Vec2ForCTC if ctc else Wav2Vec2Model)(config).eval()
    folder = tmp_path / ("ctc" if ctc else "base")
    model.save_pretrained(folder)
    if ctc:
        vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: 4 + i for i, c in enumerate(LETTERS)}}
        (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    return model, folder


@pytest.mark.parametrize("ctc", [False, True])
def test_a_transformers_folder_computes_what_transformers_computes(tmp_path, ctc):
    hf, folder = _hf_folder(tmp_path, ctc)
    ours = load_upstream("wav2vec2_base", checkpoint=folder, device="cpu")
    wav = _wav()
    with torch.no_grad():
        states, _ = ours(wav, torch.tensor([wav.shape[1]]))
        out = hf(wav, output_hidden_states=True)
    assert len(states) == len(out.hidden_states) == TINY_HF["num_hidden_layers"] + 1
    for mine, theirs in zip(states, out.hidden_states):
        assert (mine - theirs).abs().max() < 1e-4
    assert (ours.ctc is not None) is ctc
    if ctc:
        assert ours.ctc.vocab[4:] == tuple(LETTERS) and ours.ctc.blank == 0
        assert (ours.ctc_head(states[-1]) - out.logits).abs().max() < 1e-4


def _fairseq_finetuned(tmp_path, with_dict: bool = True):
    """A fine-tuned fairseq checkpoint as fairseq writes one: the pretrained model's config under
    cfg.model.w2v_args, its weights under w2v_encoder.w2v_model, the CTC layer as w2v_encoder.proj."""
    torch.manual_seed(0)
    cfg = {"encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2,
           "conv_feature_layers": "[(16, 10, 5), (16, 3, 2)]", "conv_pos": 16, "conv_pos_groups": 2, "final_dim": 16}
    task = {"sample_rate": 16000, "normalize": False}
    reference = build_wav2vec2(cfg, task, "ref", CTCOutput(("<s>", "<pad>", "</s>", "<unk>", *LETTERS))).eval()
    arch = reference.architecture()
    weights = {f"w2v_encoder.w2v_model.{k}": v for k, v in reference.model.state_dict().items()}
    weights |= {f"w2v_encoder.proj.{k}": v for k, v in reference.ctc_head.state_dict().items()}
    path = tmp_path / "ft.pt"
    torch.save({"cfg": {"model": {"_name": "wav2vec_ctc", "w2v_args": {"model": arch["model_cfg"], "task": arch["task_cfg"]}},
                        "task": {"_name": "audio_finetuning", "normalize": False}}, "model": weights}, path)
    if with_dict:
        (tmp_path / "dict.ltr.txt").write_text("".join(f"{c} {100 - i}\n" for i, c in enumerate(LETTERS)))
    return reference, path


def test_a_fine_tuned_fairseq_checkpoint_loads_with_its_letter_dictionary(tmp_path):
    reference, path = _fairseq_finetuned(tmp_path)
    ours = load_upstream("wav2vec2_base", checkpoint=path, device="cpu")
    wav = _wav()
    with torch.no_grad():
        mine, _ = ours(wav, torch.tensor([wav.shape[1]]))
        ref, _ = reference(wav, torch.tensor([wav.shape[1]]))
    assert all(torch.equal(a, b) for a, b in zip(mine, ref))
    assert torch.equal(ours.ctc_head(mine[-1]), reference.ctc_head(ref[-1])) and ours.ctc == reference.ctc
    # through a packed file: the output layer and vocabulary come back with the model
    again = load_packed(save_packed(ours, tmp_path / "ft.safetensors"), device="cpu")
    assert again.ctc == ours.ctc
    with torch.no_grad():
        assert (again.ctc_head(again(wav, torch.tensor([wav.shape[1]]))[0][-1]) - ours.ctc_head(mine[-1])).abs().max() < 1e-2


def test_a_fine_tuned_checkpoint_without_its_dictionary_is_refused_naming_the_file(tmp_path):
    _, path = _fairseq_finetuned(tmp_path, with_dict=False)
    with pytest.raises(CheckpointError, match="dict.ltr.txt"):
        load_upstream("wav2vec2_base", checkpoint=path, device="cpu")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_upstream("wav2vec2_base", checkpoint=tmp_path / "folder", device="cpu")


def test_ctc_decoding_drops_blanks_and_special_symbols():
    out = CTCOutput(("<pad>", "<s>", "</s>", "<unk>", "|", "H", "I"))
    assert out.decode([5, 0, 6, 4, 4, 1, 6, 5]) == "HI IH"


def test_end_to_end_asr_decodes_with_the_models_own_output_layer(tmp_path):
    """The e2e_asr task trains nothing and scores the fine-tuned model's own greedy transcripts;
    a model without an output layer is refused naming what to give."""
    import soundfile as sf

    from downstream.datamodule import DataConfig
    from downstream.tasks import preset
    from downstream.train import train_and_evaluate

    reference, path = _fairseq_finetuned(tmp_path)
    model = load_upstream("wav2vec2_base_960h", checkpoint=path, device="cpu")
    d = tmp_path / "corpus" / "test" / "1" / "1"
    d.mkdir(parents=True)
    wavs = [0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for i, w in enumerate(wavs):
        sf.write(d / f"1-1-{i:04d}.flac", w.numpy(), 16000)
    # the references are the model's own greedy outputs, so WER must be 0; the random model
    # outputs some letters for each, which makes the check non-trivial
    hyps = []
    with torch.no_grad():
        for w in wavs:
            states, lens = model(w[None], torch.tensor([w.numel()]))
            ids = torch.unique_consecutive(model.ctc_head(states[-1].half().float())[0].argmax(-1)).tolist()
            hyps.append(model.ctc.decode(ids))
    assert all(hyps), hyps
    (d / "1-1.trans.txt").write_text("".join(f"1-1-{i:04d} {h}\n" for i, h in enumerate(hyps)))
    data = DataConfig("librispeech", str(tmp_path / "corpus"), train=("test",), dev=("test",), test=("test",))
    result = train_and_evaluate(model, preset("e2e_asr"), data, tmp_path / "run", device="cpu", progress=False)
    assert result["metrics"]["test_wer"] == 0.0 and result["steps"] == 0 and result["checkpoint"] is None
    with pytest.raises(ValueError, match="has none"):
        train_and_evaluate(load_upstream("wav2vec2_base", random_init=True, device="cpu"), preset("e2e_asr"), data,
                           tmp_path / "run2", device="cpu", progress=False)
    with pytest.raises(CheckpointError, match="load it as wav2vec2_base"):
        load_upstream("wav2vec2_base_960h", checkpoint=_hf_folder(tmp_path, ctc=False)[1], device="cpu")

"""Hugging Face transformers folders for HuBERT Base and DistilHuBERT: tiny random transformers
models saved with ``save_pretrained`` load, and every hidden state equals transformers' own."""

import json

import pytest
import torch

from bench.cli import main
from upstream_quant import compat, load_upstream
from upstream_quant.checkpoints import CheckpointError

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
            conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0)


def _folder(tmp_path, name: str, old_weight_norm: bool = False, **config):
    """A random transformers HubertModel saved as ``save_pretrained`` does; ``old_weight_norm``
    renames the positional convolution's weight norm to the older ``weight_g``/``weight_v`` (as
    in the hub's pytorch_model.bin files)."""
    compat.ensure_torchaudio()
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    model = HubertModel(HubertConfig(**TINY, **config)).eval()
    with torch.no_grad():  # non-trivial norms, so that a missed or swapped norm shows
        for module in model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    folder = tmp_path / name
    model.save_pretrained(folder)
    if old_weight_norm:
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / "model.safetensors"))
        new = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                   "weight_v"): v for k, v in state.items()}
        assert new.keys() != state.keys()
        (folder / "model.safetensors").unlink()
        torch.save(new, folder / "pytorch_model.bin")
    return model, folder


def _wav():
    return 0.1 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("old_weight_norm", [False, True])
def test_hubert_folder_equals_transformers_in_every_hidden_state(tmp_path, old_weight_norm):
    hf, folder = _folder(tmp_path, "hubert", old_weight_norm)
    ours = load_upstream("hubert_base", checkpoint=folder, device="cpu")
    wav = _wav()
    with torch.no_grad():
        states, _ = ours(wav, torch.tensor([wav.shape[1]]))
        theirs = hf(wav, output_hidden_states=True).hidden_states
    assert len(states) == len(theirs) == TINY["num_hidden_layers"] + 1
    for mine, ref in zip(states, theirs):
        assert (mine - ref).abs().max() < 1e-4
    assert ours.source == str(folder)


def test_distilhubert_folder_loads_into_the_distiller_without_heads(tmp_path):
    hf, folder = _folder(tmp_path, "distil", feat_proj_layer_norm=False)
    ours = load_upstream("distilhubert", checkpoint=folder, device="cpu")
    wav = _wav()
    projected = {}
    hf.feature_projection.register_forward_hook(lambda _m, _i, out: projected.setdefault("x", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        states, _ = ours(wav, torch.tensor([wav.shape[1]]))
        theirs = hf(wav, output_hidden_states=True).hidden_states
    # s3prl's state 0 is the projected CNN features (transformers': after the positional conv
    # and norm); the transformer layers' outputs are the same states
    assert len(states) == ours.num_hidden_states == 3 and ours.last_transformer_state == 2
    assert (states[0] - projected["x"]).abs().max() < 1e-4
    for mine, ref in zip(states[1:], theirs[1:]):
        assert (mine - ref).abs().max() < 1e-4


def test_a_folder_of_another_family_is_refused_naming_it(tmp_path):
    _, hubert = _folder(tmp_path, "hubert")
    _, distil = _folder(tmp_path, "distil", feat_proj_layer_norm=False)
    with pytest.raises(CheckpointError, match="a hubert folder .* not distilhubert; load it as hubert_base"):
        load_upstream("distilhubert", checkpoint=hubert, device="cpu")
    with pytest.raises(CheckpointError, match="a distilhubert folder .*no feature-projection layer norm.*load it as distilhubert"):
        load_upstream("hubert_base", checkpoint=distil, device="cpu")
    with pytest.raises(CheckpointError, match="a distilhubert folder .* not wav2vec2; load it as distilhubert"):
        load_upstream("wav2vec2_base", checkpoint=distil, device="cpu")
    config = json.loads((hubert / "config.json").read_text())
    (hubert / "config.json").write_text(json.dumps(config | {"model_type": "wavlm"}))
    with pytest.raises(CheckpointError, match="a wavlm folder"):
        load_upstream("hubert_base", checkpoint=hubert, device="cpu")
    (hubert / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        load_upstream("hubert_base", checkpoint=hubert, device="cpu")


def test_cli_takes_a_folder_for_hubert(tmp_path, capsys):
    _, folder = _folder(tmp_path, "hubert")
    out = tmp_path / "h4.safetensors"
    assert main(["quantize", "--upstream", "hubert_base", "--checkpoint", str(folder), "--method", "uniform", "--bits", "4",
                 "--out", str(out)]) == 0
    assert out.is_file()

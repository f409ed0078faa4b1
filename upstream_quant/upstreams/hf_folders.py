"""Hugging Face ``transformers`` folders (``save_pretrained`` output or a hub snapshot:
``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) for the HuBERT family:
``facebook/hubert-base-ls960`` into our HuBERT (s3prl's model code) and ``ntu-spml/distilhubert``
into our Distiller. Parameter names are mapped onto fairseq's (the same map as wav2vec 2.0's,
`wav2vec2.HF_RENAMES`); weight norm comes in either parametrisation (``weight_g``/``weight_v`` or
``parametrizations.weight.original0/1``).

Which family a folder is: ``model_type`` ``wav2vec2`` is wav2vec 2.0; ``hubert`` with a layer
norm on the feature projection (``feat_proj_layer_norm``, HuBERT's own) is HuBERT; ``hubert``
without it is DistilHuBERT as transformers converted it (s3prl's Distiller has no such norm).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoints import CheckpointError

HF_LOADS_AS = {"wav2vec2": "wav2vec2_base", "hubert": "hubert_base", "distilhubert": "distilhubert"}


def read_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor], bool]:
    """``config.json``, the weights and the input normalisation (``do_normalize`` of
    ``preprocessor_config.json``) of a transformers folder."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder}: no config.json; a transformers folder holds config.json and model.safetensors "
                              "or pytorch_model.bin")
    config = json.loads(config_file.read_text())
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")
    prep = folder / "preprocessor_config.json"
    normalize = bool(json.loads(prep.read_text()).get("do_normalize", False)) if prep.is_file() else False
    return config, state, normalize


def folder_family(config: dict) -> str:
    """``wav2vec2``, ``hubert`` or ``distilhubert`` (see the module docstring); else the folder's
    own ``model_type``."""
    kind = config.get("model_type")
    if kind == "hubert":
        return "hubert" if config.get("feat_proj_layer_norm", True) else "distilhubert"
    return str(kind)


def check_family(folder: Path, config: dict, expected: str) -> None:
    family = folder_family(config)
    if family != expected:
        hint = f"; load it as {HF_LOADS_AS[family]}" if family in HF_LOADS_AS else ""
        raise CheckpointError(f"{folder}: a {family} folder (config.json model_type {config.get('model_type')!r}"
                              f"{', no feature-projection layer norm' if family == 'distilhubert' else ''}), "
                              f"not {expected}{hint}")


def _common_cfg(config: dict, folder: Path) -> dict:
    """fairseq's encoder fields shared by HuBERT and the Distiller."""
    if config.get("feat_extract_activation", "gelu") != "gelu" or config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{folder}: only GELU models are supported")
    layers = ", ".join(f"({d}, {k}, {s})" for d, k, s in zip(config["conv_dim"], config["conv_kernel"], config["conv_stride"]))
    return {
        "extractor_mode": "layer_norm" if config.get("feat_extract_norm") == "layer" else "default",
        "conv_feature_layers": f"[{layers}]",
        "encoder_embed_dim": config["hidden_size"], "encoder_layers": config["num_hidden_layers"],
        "encoder_attention_heads": config["num_attention_heads"], "encoder_ffn_embed_dim": config["intermediate_size"],
        "conv_pos": config["num_conv_pos_embeddings"], "conv_pos_groups": config["num_conv_pos_embedding_groups"],
        "layer_norm_first": bool(config.get("do_stable_layer_norm", False)),
    }


def _renamed(state: dict, extractor_mode: str, prefix: str) -> tuple[dict, list[str]]:
    """Our (fairseq's) names of a folder's parameters under ``prefix``, and the keys not mapped."""
    from .wav2vec2 import _rename

    weights, skipped = {}, []
    for key, value in state.items():
        new = _rename(key.removeprefix(prefix), extractor_mode)
        (skipped.append(key) if new is None else weights.__setitem__(new, value))
    return weights, skipped


# what a HubertModel / HubertForCTC folder holds beside the encoder (CTC head: not an upstream's)
_HF_EXTRA = ("lm_head.", "masked_spec_embed", "hubert.masked_spec_embed")


def load_hubert_folder(folder: str | Path, name: str = "hubert_base"):
    """A transformers ``HubertModel`` (or ``HubertForCTC``: its encoder) folder as our HuBERT:
    all 13 hidden states, equal to transformers' own (tested). The pretraining heads
    (``final_proj``, label embeddings), which a transformers folder does not hold, stay at their
    initial values: nothing at inference reads them."""
    from .hubert import HUBERT_BASE, HubertUpstream, _build

    folder = Path(folder)
    config, state, normalize = read_folder(folder)
    check_family(folder, config, "hubert")
    if config.get("conv_bias", False):
        raise CheckpointError(f"{folder}: conv_bias true; HuBERT's feature extractor has no convolution biases")
    model_cfg = _common_cfg(config, folder) | {"label_rate": 50.0, "final_dim": HUBERT_BASE["model_cfg"]["final_dim"]}
    weights, skipped = _renamed(state, model_cfg["extractor_mode"], "hubert.")
    unknown = [k for k in skipped if not k.startswith(_HF_EXTRA)]
    if unknown:
        raise CheckpointError(f"{folder}: parameters this loader does not know: {unknown[:5]}")
    symbols = [[f"<s{i}>" for i in range(HUBERT_BASE["num_symbols"])]]
    torch.manual_seed(0)  # the unused pretraining heads: reproducible
    upstream = _build(model_cfg, {"label_rate": 50.0, "sample_rate": 16000, "normalize": normalize}, symbols, name)
    result = upstream.model.load_state_dict(weights, strict=False)
    unused = tuple(p.removeprefix("model.") for p in HubertUpstream.unused_at_inference)
    missing = [k for k in result.missing_keys if not k.startswith(unused)]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{folder} does not match the HuBERT architecture its config.json describes: "
                              f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return upstream


def load_distilhubert_folder(folder: str | Path, name: str = "distilhubert"):
    """A transformers DistilHuBERT folder (``ntu-spml/distilhubert``: a ``HubertModel`` with 2
    layers and no feature-projection norm) as our Distiller. transformers keeps no prediction
    heads, so this upstream has 3 hidden states (projected CNN features, then each transformer
    layer) instead of s3prl's 6 (those plus the 3 heads); the last transformer layer, which
    SUPERB's DistilHuBERT protocol uses, is state 2 either way."""
    from .distiller import DISTILHUBERT, build_distiller

    folder = Path(folder)
    config, state, normalize = read_folder(folder)
    check_family(folder, config, "distilhubert")
    if normalize:
        raise CheckpointError(f"{folder}: do_normalize true; s3prl's Distiller takes raw waveforms")
    common = _common_cfg(config, folder)
    distiller = {k: v for k, v in DISTILHUBERT.items() if k not in ("pred_layer_id",)} | {
        "extractor_mode": common["extractor_mode"], "extractor_conv_feature_layers": common["conv_feature_layers"],
        **{k: common[k] for k in ("encoder_embed_dim", "encoder_layers", "encoder_attention_heads",
                                   "encoder_ffn_embed_dim", "conv_pos", "conv_pos_groups", "layer_norm_first")},
        "out_layer_type": "none", "task_emb_type": "none", "n_tasks": 0, "pred_layer_id": [],
    }
    if config.get("conv_bias", False):
        raise CheckpointError(f"{folder}: conv_bias true; the Distiller's feature extractor has no convolution biases")
    weights, skipped = _renamed(state, common["extractor_mode"], "hubert.")  # the projection: post_extract_proj
    unknown = [k for k in skipped if not k.startswith(_HF_EXTRA)]
    weights.pop("mask_emb", None)  # pretraining only: the Distiller has none
    if unknown:
        raise CheckpointError(f"{folder}: parameters this loader does not know: {unknown[:5]}")
    upstream = build_distiller(distiller, name)
    try:
        upstream.model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{folder} does not match the Distiller architecture its config.json describes: {err}") from err
    return upstream

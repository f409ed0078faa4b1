"""Hugging Face ``transformers`` folders (``save_pretrained`` output or a hub snapshot:
``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) for the HuBERT family:
``facebook/hubert-base-ls960`` into our HuBERT (s3prl's model code) and ``ntu-spml/distilhubert``
into our Distiller (each family's loader is in its own module; this one holds what they share).
Parameter names are mapped onto fairseq's (one map, `HF_RENAMES`, for wav2vec 2.0 and the HuBERT
family); weight norm comes in either parametrisation (``weight_g``/``weight_v`` or
``parametrizations.weight.original0/1``).

Which family a folder is: ``model_type`` ``wav2vec2`` is wav2vec 2.0; ``hubert`` with a layer
norm on the feature projection (``feat_proj_layer_norm``, HuBERT's own) is HuBERT; ``hubert``
without it is DistilHuBERT as transformers converted it (s3prl's Distiller has no such norm).
"""

from __future__ import annotations

import json
import re
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


def common_cfg(config: dict, folder: Path) -> dict:
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


def renamed(state: dict, extractor_mode: str, prefix: str) -> tuple[dict, list[str]]:
    """Our (fairseq's) names of a folder's parameters under ``prefix``, and the keys not mapped."""
    weights, skipped = {}, []
    for key, value in state.items():
        new = rename(key.removeprefix(prefix), extractor_mode)
        (skipped.append(key) if new is None else weights.__setitem__(new, value))
    return weights, skipped


# transformers' Wav2Vec2 / Hubert parameter names -> s3prl's (fairseq's): (pattern, replacement). The
# extractor's norm sits at index 2 of fairseq's conv block: a GroupNorm (layer 0, "default"
# extractor) or a LayerNorm between two transposes (every layer, "layer_norm" extractor).
HF_RENAMES = (
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"feature_projection\.layer_norm\.", "layer_norm."),
    (r"feature_projection\.projection\.", "post_extract_proj."),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
    (r"encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
    (r"encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
    (r"encoder\.layer_norm\.", "encoder.layer_norm."),
    (r"masked_spec_embed$", "mask_emb"),
)


def rename(key: str, extractor_mode: str) -> str | None:
    """Our name of a transformers parameter (without its ``wav2vec2.`` prefix), None if not ours."""
    norm = r"feature_extractor.conv_layers.\1.2." if extractor_mode == "default" else r"feature_extractor.conv_layers.\1.2.1."
    for pattern, replacement in ((r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", norm), *HF_RENAMES):
        new, n = re.subn("^" + pattern, replacement, key)
        if n:
            return new
    return None


# what a HubertModel / HubertForCTC folder holds beside the encoder (CTC head: not an upstream's)
HF_EXTRA = ("lm_head.", "masked_spec_embed", "hubert.masked_spec_embed")

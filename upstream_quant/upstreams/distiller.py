"""DistilHuBERT (s3prl's Distiller) upstreams on s3prl's model code (`s3prl.upstream.distiller.model`)."""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch

from ..checkpoints import CheckpointError, read_checkpoint, to_plain
from ..compat import ensure_torchaudio
from .hf_folders import HF_EXTRA, check_family, common_cfg, read_folder, renamed
from ..upstream import Upstream, check_batch, padding_mask
from . import UpstreamSpec, register_family, register_upstream

ensure_torchaudio()
from s3prl.upstream.distiller.model import DistillerConfig, DistillerModel  # noqa: E402

logger = logging.getLogger(__name__)

# distilhubert_ls960_4-8-12: 2 transformer layers, prediction heads for HuBERT layers 4, 8, 12.
DISTILHUBERT = {
    "extractor_mode": "default",
    "extractor_conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "feature_grad_mult": 0.1,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "encoder_layers": 2,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "final_dim": 768,
    "out_layer_type": "expand-last",
    "n_tasks": 3,
    "task_emb_type": "expand-last",
    "pred_layer_id": [4, 8, 12],
    "cosine_loss": 1.0,
}


class DistillerUpstream(Upstream):
    """Hidden states as s3prl's distiller expert returns them: projected CNN features, each
    transformer layer, then each prediction head (6 for DistilHuBERT). SUPERB's DistilHuBERT
    protocol uses the last transformer layer (index `1 + encoder_layers - 1`)."""

    group_prefixes = {
        "model.feature_extractor": "cnn",
        "model.post_extract_proj": "feature_projection",
        "model.encoder": "transformer",
        "model.encoder.pos_conv": "positional_conv",
        "model.output_layer": "heads",
    }

    def __init__(self, model: DistillerModel, config: dict, name: str):
        super().__init__()
        self.name = name
        self.model = model
        self.config = dict(config)
        model.feature_grad_mult = 0.0
        for module in model.modules():  # same reason as in upstream.FairseqEncoder._setup
            if hasattr(module, "skip_embed_dim_check"):
                module.skip_embed_dim_check = True
        self.convs = [(layer[0].kernel_size[0], layer[0].stride[0]) for layer in model.feature_extractor.conv_layers]
        self.hidden_size = model.config.encoder_embed_dim
        self.num_encoder_layers = model.config.encoder_layers
        self.num_hidden_states = 1 + self.num_encoder_layers + model.n_tasks
        self.last_transformer_state = self.num_encoder_layers  # states: front end, layers, then heads

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor):
        check_batch(wavs, wavs_len)
        valid = (~padding_mask(wavs_len.to(wavs.device), wavs.shape[1])).float()
        # a Distiller without prediction heads (a transformers DistilHuBERT folder) has no states after its layers
        _, feat_final, pred, pad_mask, layer_hidden = self.model(wavs, valid, get_hidden=True,
                                                                 no_pred=self.model.output_layer is None)
        states = [feat_final] + list(layer_hidden) + (list(pred.unbind(1)) if pred is not None else [])
        lengths = pad_mask.sum(1).long()
        return states, [lengths] * len(states)

    def forward_one(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """`Upstream.forward_one`: the Distiller's steps with no padding mask (its encoder's
        masking is a data-dependent index)."""
        m = self.model
        if m.task_emb_type != "expand-last":
            raise NotImplementedError(f"{self.name}: forward_one follows DistilHuBERT's task embedding 'expand-last', "
                                      f"this model has {m.task_emb_type!r}")
        x = m.feature_extractor(wav).transpose(1, 2)
        if m.post_extract_proj is not None:
            x = m.post_extract_proj(x)
        hidden, layers = m.encoder(x, None, get_hidden=True)
        states = [x, *layers]
        if m.output_layer is not None:  # (1, frames, heads x dim) -> one state per head
            pred = m.output_layer(hidden)
            states += list(pred.reshape(1, pred.shape[1], m.n_tasks, -1).unbind(2))
        return states

    def architecture(self) -> dict:
        """Everything needed to rebuild this architecture without its weights."""
        return {"family": "distiller", "config": self.config}

    def s3prl_state(self) -> dict:
        """This model as a Distiller checkpoint (`distiller_local` loads it)."""
        return {"Config": {"distiller": self.config}, "Distiller": self.model.state_dict()}


def build_distiller(config: dict, name: str) -> DistillerUpstream:
    # s3prl's Distiller prints its configuration to stdout; keep stdout clean for --json output.
    with contextlib.redirect_stdout(io.StringIO()) as log:
        model = DistillerModel(DistillerConfig(dict(config)))
    logger.debug(log.getvalue())
    return DistillerUpstream(model, config, name)


def build_distilhubert(name: str = "distilhubert") -> DistillerUpstream:
    """The exact DistilHuBERT architecture with random weights (offline)."""
    return build_distiller(DISTILHUBERT, name)


def load_distiller_checkpoint(path: str | Path, name: str = "distilhubert") -> DistillerUpstream:
    """A Distiller checkpoint as s3prl's pretraining writes it (fields Config, Distiller), or a
    transformers DistilHuBERT folder (`load_distilhubert_folder`: no prediction heads)."""
    if Path(path).is_dir():
        return load_distilhubert_folder(path, name)
    # Old checkpoints also pickle a scheduler from a top-level `optimizers` module;
    # checkpoints.read_checkpoint reads it as a plain attribute holder.
    state = read_checkpoint(path, required=("Config", "Distiller"))
    config = to_plain(state["Config"])
    if not isinstance(config, dict) or "distiller" not in config:
        raise CheckpointError(f"checkpoint {path}: Config lacks the 'distiller' section")
    upstream = build_distiller(config["distiller"], name)
    try:
        upstream.model.load_state_dict(state["Distiller"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not match the Distiller architecture it describes: {err}") from err
    return upstream


def load_distilhubert_folder(folder: str | Path, name: str = "distilhubert"):
    """A transformers DistilHuBERT folder (``ntu-spml/distilhubert``: a ``HubertModel`` with 2
    layers and no feature-projection norm) as our Distiller. transformers keeps no prediction
    heads, so this upstream has 3 hidden states (projected CNN features, then each transformer
    layer) instead of s3prl's 6 (those plus the 3 heads); the last transformer layer, which
    SUPERB's DistilHuBERT protocol uses, is state 2 either way."""
    folder = Path(folder)
    config, state, normalize = read_folder(folder)
    check_family(folder, config, "distilhubert")
    if normalize:
        raise CheckpointError(f"{folder}: do_normalize true; s3prl's Distiller takes raw waveforms")
    common = common_cfg(config, folder)
    distiller = {k: v for k, v in DISTILHUBERT.items() if k not in ("pred_layer_id",)} | {
        "extractor_mode": common["extractor_mode"], "extractor_conv_feature_layers": common["conv_feature_layers"],
        **{k: common[k] for k in ("encoder_embed_dim", "encoder_layers", "encoder_attention_heads",
                                   "encoder_ffn_embed_dim", "conv_pos", "conv_pos_groups", "layer_norm_first")},
        "out_layer_type": "none", "task_emb_type": "none", "n_tasks": 0, "pred_layer_id": [],
    }
    if config.get("conv_bias", False):
        raise CheckpointError(f"{folder}: conv_bias true; the Distiller's feature extractor has no convolution biases")
    weights, skipped = renamed(state, common["extractor_mode"], "hubert.")  # the projection: post_extract_proj
    unknown = [k for k in skipped if not k.startswith(HF_EXTRA)]
    weights.pop("mask_emb", None)  # pretraining only: the Distiller has none
    if unknown:
        raise CheckpointError(f"{folder}: parameters this loader does not know: {unknown[:5]}")
    upstream = build_distiller(distiller, name)
    try:
        upstream.model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{folder} does not match the Distiller architecture its config.json describes: {err}") from err
    return upstream


register_family("distiller", lambda arch, name: build_distiller(arch["config"], name))
register_upstream(UpstreamSpec(
    "distilhubert", "DistilHuBERT (distilled from HuBERT Base), 2 layers; s3prl `distilhubert`",
    build_distilhubert, load_distiller_checkpoint,
    "https://huggingface.co/leo19941227/distilhubert/resolve/main/distilhubert_ls960_4-8-12.ckpt"))

"""wav2vec 2.0 upstreams on s3prl's fairseq-free model code (`s3prl.upstream.wav2vec2`), the model
family of the myQASR paper. Same hidden states as s3prl's `wav2vec2` expert: the inputs of each
transformer layer and the encoder output (13 for Base)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..checkpoints import CheckpointError, read_checkpoint, to_plain
from ..compat import ensure_torchaudio
from ..upstream import FairseqEncoder
from . import UpstreamSpec, register_family, register_upstream

ensure_torchaudio()
from s3prl.upstream.utils import merge_with_parent  # noqa: E402
from s3prl.upstream.wav2vec2.wav2vec2_model import AudioPretrainingConfig, Wav2Vec2Config, Wav2Vec2Model  # noqa: E402

# wav2vec2_base_960: fairseq's Base config (its dataclass defaults: 12 layers, 768 dims, the
# "default" extractor with one group norm) and unnormalised input, as the released checkpoint.
WAV2VEC2_BASE = {"model_cfg": {"extractor_mode": "default"}, "task_cfg": {"sample_rate": 16000, "normalize": False}}
S3PRL_KEYS = ("task_cfg", "model_cfg", "model_weight")


class Wav2Vec2Upstream(FairseqEncoder):
    """All hidden states of a wav2vec 2.0 model: each transformer layer's input, then the output."""

    group_prefixes = {**FairseqEncoder.group_prefixes, "model.quantizer": "heads", "model.project_q": "heads",
                      "model.final_proj": "heads"}
    # Pretraining-only parameters (the contrastive task's quantizer and projections).
    unused_at_inference = ("model.quantizer", "model.project_q", "model.final_proj", "model.mask_emb")

    def __init__(self, model: Wav2Vec2Model, task_cfg: AudioPretrainingConfig, name: str):
        super().__init__()
        self.name = name
        self._setup(model, task_cfg)

    def _extract(self, wavs: torch.Tensor, pad: torch.Tensor):
        result = self.model.extract_features(wavs, pad, mask=False)
        return result["x"], result["padding_mask"]

    def architecture(self) -> dict:
        return {"family": "wav2vec2", "model_cfg": asdict(self.model.cfg), "task_cfg": asdict(self.task_cfg)}

    def s3prl_state(self) -> dict:
        """This model as an s3prl-converted checkpoint (s3prl's `wav2vec2_local` loads it)."""
        return {"task_cfg": asdict(self.task_cfg), "model_cfg": asdict(self.model.cfg),
                "model_weight": self.model.state_dict()}


def build_wav2vec2(model_cfg: dict, task_cfg: dict, name: str) -> Wav2Vec2Upstream:
    mcfg = merge_with_parent(Wav2Vec2Config, dict(model_cfg))
    tcfg = merge_with_parent(AudioPretrainingConfig, dict(task_cfg))
    return Wav2Vec2Upstream(Wav2Vec2Model(mcfg), tcfg, name)


def build_wav2vec2_base(name: str = "wav2vec2_base") -> Wav2Vec2Upstream:
    """The exact wav2vec 2.0 Base architecture with random weights (offline)."""
    return build_wav2vec2(WAV2VEC2_BASE["model_cfg"], WAV2VEC2_BASE["task_cfg"], name)


def load_wav2vec2_checkpoint(path: str | Path, name: str = "wav2vec2_base") -> Wav2Vec2Upstream:
    """A pretrained wav2vec 2.0 checkpoint: s3prl's converted format or fairseq's original one.
    A fine-tuned (CTC) fairseq checkpoint is refused with the reason: its encoder sits under
    ``w2v_encoder.w2v_model``, with a CTC projection this upstream does not carry."""
    state = read_checkpoint(path)
    if all(key in state for key in S3PRL_KEYS):
        model_cfg, task_cfg, weights = to_plain(state["model_cfg"]), to_plain(state["task_cfg"]), state["model_weight"]
    elif "cfg" in state and "model" in state:  # fairseq
        cfg = to_plain(state["cfg"])
        if "model" not in cfg or "task" not in cfg:
            raise CheckpointError(f"fairseq checkpoint {path}: cfg lacks 'model' or 'task'")
        if any(k.startswith("w2v_encoder.") for k in state["model"]):
            raise CheckpointError(f"{path} is a fine-tuned wav2vec 2.0 (CTC) checkpoint; give the pretrained one "
                                  "(e.g. wav2vec_small.pt), whose encoder this upstream is")
        model_cfg, task_cfg, weights = cfg["model"], cfg["task"], state["model"]
    else:
        raise CheckpointError(f"{path} is neither an s3prl-converted wav2vec 2.0 checkpoint (fields {list(S3PRL_KEYS)}) "
                              f"nor a fairseq one (fields cfg, model); it has {sorted(state)[:12]}")
    model_cfg = {k: v for k, v in model_cfg.items() if k != "_name"}
    task_cfg = {k: v for k, v in task_cfg.items() if k != "_name"}
    try:
        upstream = build_wav2vec2(model_cfg, task_cfg, name)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a wav2vec 2.0 configuration ({err})") from err
    try:
        upstream.model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not match the wav2vec 2.0 architecture it describes: {err}") from err
    return upstream


register_family("wav2vec2", lambda arch, name: build_wav2vec2(arch["model_cfg"], arch["task_cfg"], name))
register_upstream(UpstreamSpec(
    "wav2vec2_base", "wav2vec 2.0 Base (LibriSpeech 960 h, pretrained), 12 layers, 768 dims; s3prl `wav2vec2` "
    "(myQASR's model family)",
    build_wav2vec2_base, load_wav2vec2_checkpoint,
    "https://huggingface.co/s3prl/converted_ckpts/resolve/main/wav2vec_small.pt"))

"""HuBERT upstreams on s3prl's fairseq-free model code (`s3prl.upstream.hubert.hubert_model`)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import CheckpointError, read_checkpoint, to_plain
from ..compat import ensure_torchaudio
from .hf_folders import HF_EXTRA, check_family, common_cfg, read_folder, renamed
from ..upstream import FairseqEncoder
from . import UpstreamSpec, register_family, register_upstream

ensure_torchaudio()
from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig  # noqa: E402
from s3prl.upstream.utils import merge_with_parent  # noqa: E402

# hubert_base_ls960: the fairseq Base config, 504 label symbols (500 clusters + 4 specials),
# final projection to 256 dims; these shape the pretraining heads only.
HUBERT_BASE = {
    "model_cfg": {"label_rate": 50.0, "final_dim": 256, "extractor_mode": "default"},
    "task_cfg": {"label_rate": 50.0, "sample_rate": 16000, "normalize": False},
    "num_symbols": 504,
}

S3PRL_KEYS = ("task_cfg", "model_cfg", "model_weight", "dictionaries_symbols")


class HubertUpstream(FairseqEncoder):
    """All 13 hidden states of a HuBERT model: the transformer input, then each layer's output.

    Same states as s3prl's HuBERT expert: inputs of encoder.layers[i] and the encoder output.
    """

    group_prefixes = {**FairseqEncoder.group_prefixes, "model.final_proj": "heads", "model.label_embs_concat": "heads"}
    # Pretraining-only parameters: never touched by forward, left out of packed files.
    unused_at_inference = ("model.final_proj", "model.label_embs_concat", "model.mask_emb")

    def __init__(self, model: HubertModel, task_cfg: HubertPretrainingConfig, symbols: list[list[str]], name: str):
        super().__init__()
        self.name, self.symbols = name, symbols
        self._setup(model, task_cfg)

    def _extract(self, wavs: torch.Tensor, pad: torch.Tensor):
        return self.model.extract_features(wavs, padding_mask=pad, mask=False)

    def architecture(self) -> dict:
        """Everything needed to rebuild this architecture without its weights."""
        from dataclasses import asdict

        return {"family": "hubert", "model_cfg": asdict(self.model.cfg), "task_cfg": asdict(self.task_cfg),
                "symbols": self.symbols}

    def s3prl_state(self) -> dict:
        """This model as an s3prl-converted checkpoint (`hubert_local` loads it)."""
        from dataclasses import asdict

        return {
            "task_cfg": asdict(self.task_cfg),
            "model_cfg": asdict(self.model.cfg),
            "model_weight": self.model.state_dict(),
            "dictionaries_symbols": self.symbols,
        }


def _build(model_cfg: dict, task_cfg: dict, symbols: list[list[str]], name: str) -> HubertUpstream:
    mcfg = merge_with_parent(HubertConfig, dict(model_cfg))
    tcfg = merge_with_parent(HubertPretrainingConfig, dict(task_cfg))
    model = HubertModel(mcfg, tcfg, symbols)
    model.cfg = mcfg  # kept so the model can be saved back in s3prl's format
    return HubertUpstream(model, tcfg, symbols, name)


def build_hubert_base(name: str = "hubert_base") -> HubertUpstream:
    """The exact HuBERT Base architecture with random weights (offline)."""
    symbols = [[f"<s{i}>" for i in range(HUBERT_BASE["num_symbols"])]]
    return _build(HUBERT_BASE["model_cfg"], HUBERT_BASE["task_cfg"], symbols, name)


def load_hubert_checkpoint(path: str | Path, name: str = "hubert_base") -> HubertUpstream:
    """A HuBERT checkpoint in s3prl's converted format or fairseq's original format, or a
    transformers ``HubertModel`` folder (`load_hubert_folder`)."""
    if Path(path).is_dir():
        return load_hubert_folder(path, name)
    state = read_checkpoint(path)
    if all(key in state for key in S3PRL_KEYS):
        model_cfg, task_cfg = to_plain(state["model_cfg"]), to_plain(state["task_cfg"])
        symbols, weights = state["dictionaries_symbols"], state["model_weight"]
    elif "cfg" in state and "model" in state:  # fairseq
        cfg = to_plain(state["cfg"])
        if "model" not in cfg or "task" not in cfg:
            raise CheckpointError(f"fairseq checkpoint {path}: cfg lacks 'model' or 'task'")
        model_cfg, task_cfg, weights = cfg["model"], cfg["task"], state["model"]
        try:
            dictionaries = state["task_state"]["dictionaries"]
            symbols = [list(getattr(d, "symbols", None) or to_plain(d)["symbols"]) for d in dictionaries]
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"fairseq checkpoint {path}: cannot read task_state.dictionaries ({err})") from err
    else:
        raise CheckpointError(
            f"{path} is neither an s3prl-converted HuBERT checkpoint (fields {list(S3PRL_KEYS)}) "
            f"nor a fairseq one (fields cfg, model, task_state); it has {sorted(state)[:12]}"
        )
    upstream = _build(model_cfg, task_cfg, symbols, name)
    try:
        upstream.model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not match the HuBERT architecture it describes: {err}") from err
    return upstream


def load_hubert_folder(folder: str | Path, name: str = "hubert_base"):
    """A transformers ``HubertModel`` (or ``HubertForCTC``: its encoder) folder as our HuBERT:
    all 13 hidden states, equal to transformers' own (tested). The pretraining heads
    (``final_proj``, label embeddings), which a transformers folder does not hold, stay at their
    initial values: nothing at inference reads them."""
    folder = Path(folder)
    config, state, normalize = read_folder(folder)
    check_family(folder, config, "hubert")
    if config.get("conv_bias", False):
        raise CheckpointError(f"{folder}: conv_bias true; HuBERT's feature extractor has no convolution biases")
    model_cfg = common_cfg(config, folder) | {"label_rate": 50.0, "final_dim": HUBERT_BASE["model_cfg"]["final_dim"]}
    weights, skipped = renamed(state, model_cfg["extractor_mode"], "hubert.")
    unknown = [k for k in skipped if not k.startswith(HF_EXTRA)]
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


def _hubert_family(arch: dict, name: str) -> HubertUpstream:
    return _build(arch["model_cfg"], arch["task_cfg"], arch["symbols"], name)


register_family("hubert", _hubert_family)
register_upstream(UpstreamSpec(
    "hubert_base", "HuBERT Base (LibriSpeech 960 h), 12 layers, 768 dims; s3prl `hubert`",
    build_hubert_base, load_hubert_checkpoint,
    "https://huggingface.co/s3prl/converted_ckpts/resolve/main/hubert_base_ls960.pt"))

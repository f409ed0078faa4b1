"""wav2vec 2.0 upstreams on s3prl's fairseq-free model code (`s3prl.upstream.wav2vec2`), the model
family of the myQASR paper. Same hidden states as s3prl's `wav2vec2` expert: the inputs of each
transformer layer and the encoder output (13 for Base).

Checkpoints: s3prl-converted, fairseq's pretrained and fine-tuned (CTC) ``.pt`` files, and
transformers folders (``config.json`` with ``model.safetensors`` or ``pytorch_model.bin``, and
``vocab.json`` for a ``Wav2Vec2ForCTC``). A fine-tuned model carries its CTC output layer and
letter vocabulary (`CTCOutput`), which myQASR evaluates end to end (downstream task ``e2e_asr``)."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..accounting import under_any
from ..checkpoints import CheckpointError, read_checkpoint, to_plain
from ..compat import ensure_torchaudio
from .hf_folders import check_family, read_folder, rename as _rename
from ..upstream import FairseqEncoder
from . import UpstreamSpec, register_family, register_upstream

ensure_torchaudio()
from s3prl.upstream.utils import merge_with_parent  # noqa: E402
from s3prl.upstream.wav2vec2.wav2vec2_model import AudioPretrainingConfig, Wav2Vec2Config, Wav2Vec2Model  # noqa: E402

# wav2vec2_base_960: fairseq's Base config (its dataclass defaults: 12 layers, 768 dims, the
# "default" extractor with one group norm) and unnormalised input, as the released checkpoint.
WAV2VEC2_BASE = {"model_cfg": {"extractor_mode": "default"}, "task_cfg": {"sample_rate": 16000, "normalize": False}}
S3PRL_KEYS = ("task_cfg", "model_cfg", "model_weight")
# fairseq's Dictionary starts with these; <s> is the CTC blank of its fine-tuned models.
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


@dataclass(frozen=True)
class CTCOutput:
    """A fine-tuned model's letter vocabulary: index -> symbol, the CTC blank's index, and the word
    separator (fairseq's and transformers' letter dictionaries use ``|``)."""

    vocab: tuple[str, ...]
    blank: int = 0
    word_separator: str = "|"

    def decode(self, ids: list[int]) -> str:
        """Text of greedy CTC output (repeats already merged): blanks and special symbols dropped."""
        chars = [self.vocab[i] for i in ids if i != self.blank and not (self.vocab[i].startswith("<") and self.vocab[i].endswith(">"))]
        return " ".join("".join(chars).replace(self.word_separator, " ").split())


class Wav2Vec2Upstream(FairseqEncoder):
    """All hidden states of a wav2vec 2.0 model: each transformer layer's input, then the output.
    A fine-tuned one also has ``ctc_head`` (encoder output -> letter logits) and ``ctc``."""

    group_prefixes = {**FairseqEncoder.group_prefixes, "model.quantizer": "heads", "model.project_q": "heads",
                      "model.final_proj": "heads", "ctc_head": "heads"}
    # Pretraining-only parameters (the contrastive task's quantizer and projections).
    unused_at_inference = ("model.quantizer", "model.project_q", "model.final_proj", "model.mask_emb")

    def __init__(self, model: Wav2Vec2Model, task_cfg: AudioPretrainingConfig, name: str, ctc: CTCOutput | None = None):
        super().__init__()
        self.name = name
        self._setup(model, task_cfg)
        self.ctc = ctc
        if ctc is not None:
            self.ctc_head = nn.Linear(self.hidden_size, len(ctc.vocab))

    def _extract(self, wavs: torch.Tensor, pad: torch.Tensor):
        result = self.model.extract_features(wavs, pad, mask=False)
        return result["x"], result["padding_mask"]

    def architecture(self) -> dict:
        arch = {"family": "wav2vec2", "model_cfg": asdict(self.model.cfg), "task_cfg": asdict(self.task_cfg)}
        if self.ctc is not None:
            arch["ctc"] = asdict(self.ctc)
        return arch

    def s3prl_state(self) -> dict:
        """This model as an s3prl-converted checkpoint (s3prl's `wav2vec2_local` loads it)."""
        return {"task_cfg": asdict(self.task_cfg), "model_cfg": asdict(self.model.cfg),
                "model_weight": self.model.state_dict()}


def build_wav2vec2(model_cfg: dict, task_cfg: dict, name: str, ctc: dict | CTCOutput | None = None) -> Wav2Vec2Upstream:
    mcfg = merge_with_parent(Wav2Vec2Config, dict(model_cfg))
    tcfg = merge_with_parent(AudioPretrainingConfig, dict(task_cfg))
    if isinstance(ctc, dict):
        ctc = CTCOutput(tuple(ctc["vocab"]), ctc.get("blank", 0), ctc.get("word_separator", "|"))
    return Wav2Vec2Upstream(Wav2Vec2Model(mcfg), tcfg, name, ctc)


def build_wav2vec2_base(name: str = "wav2vec2_base") -> Wav2Vec2Upstream:
    """The exact wav2vec 2.0 Base architecture with random weights (offline)."""
    return build_wav2vec2(WAV2VEC2_BASE["model_cfg"], WAV2VEC2_BASE["task_cfg"], name)


def load_wav2vec2_checkpoint(path: str | Path, name: str = "wav2vec2_base") -> Wav2Vec2Upstream:
    """A wav2vec 2.0 checkpoint: s3prl's converted format, fairseq's pretrained or fine-tuned (CTC)
    ``.pt``, or a transformers folder. A fairseq CTC checkpoint does not hold its dictionary: it is
    read from ``dict.ltr.txt`` beside the file (fairseq's letter dictionary, as in the data folder
    it was fine-tuned on)."""
    if Path(path).is_dir():
        return load_transformers_folder(path, name)
    state = read_checkpoint(path)
    ctc, head = None, None
    if all(key in state for key in S3PRL_KEYS):
        model_cfg, task_cfg, weights = to_plain(state["model_cfg"]), to_plain(state["task_cfg"]), state["model_weight"]
    elif "cfg" in state and "model" in state:  # fairseq
        cfg = to_plain(state["cfg"])
        if "model" not in cfg or "task" not in cfg:
            raise CheckpointError(f"fairseq checkpoint {path}: cfg lacks 'model' or 'task'")
        weights = state["model"]
        if any(k.startswith("w2v_encoder.") for k in weights):  # fine-tuned: the pretraining config is nested
            w2v = cfg["model"].get("w2v_args") or {}
            if "model" not in w2v or "task" not in w2v:
                raise CheckpointError(f"fine-tuned fairseq checkpoint {path}: cfg.model.w2v_args lacks 'model' or 'task'")
            model_cfg, task_cfg = w2v["model"], {**w2v["task"], "normalize": cfg["task"].get("normalize", w2v["task"].get("normalize"))}
            head = {k.removeprefix("w2v_encoder.proj."): v for k, v in weights.items() if k.startswith("w2v_encoder.proj.")}
            weights = {k.removeprefix("w2v_encoder.w2v_model."): v for k, v in weights.items() if k.startswith("w2v_encoder.w2v_model.")}
            ctc = fairseq_letters(Path(path).parent / "dict.ltr.txt", path)
        else:
            model_cfg, task_cfg = cfg["model"], cfg["task"]
    else:
        raise CheckpointError(f"{path} is neither an s3prl-converted wav2vec 2.0 checkpoint (fields {list(S3PRL_KEYS)}), "
                              f"a fairseq one (fields cfg, model) nor a transformers folder; it has {sorted(state)[:12]}")
    model_cfg = {k: v for k, v in model_cfg.items() if k != "_name"}
    task_cfg = {k: v for k, v in task_cfg.items() if k != "_name"}
    return _assemble(path, model_cfg, task_cfg, weights, name, ctc, head)


def _assemble(path, model_cfg: dict, task_cfg: dict, weights: dict, name: str, ctc: CTCOutput | None,
              head: dict | None, missing_ok: tuple[str, ...] = ()) -> Wav2Vec2Upstream:
    """Build the architecture a checkpoint describes and load its weights; ``missing_ok``: module
    paths (pretraining-only) a source may lack."""
    try:
        upstream = build_wav2vec2(model_cfg, task_cfg, name, ctc)
    except (TypeError, ValueError, SyntaxError) as err:
        raise CheckpointError(f"{path}: not a wav2vec 2.0 configuration ({err})") from err
    try:
        result = upstream.model.load_state_dict(weights, strict=not missing_ok)
        missing = [k for k in result.missing_keys if not under_any(k, missing_ok)] if missing_ok else []
        if missing or (missing_ok and result.unexpected_keys):
            raise RuntimeError(f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        if ctc is not None:
            upstream.ctc_head.load_state_dict(head)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not match the wav2vec 2.0 architecture it describes: {err}") from err
    return upstream


def fairseq_letters(dict_file: Path, checkpoint) -> CTCOutput:
    """fairseq's letter dictionary: its four special symbols (<s> = the CTC blank, <pad>, </s>,
    <unk>), then one ``SYMBOL COUNT`` line per letter in the order of ``dict.ltr.txt``."""
    if not dict_file.is_file():
        raise CheckpointError(f"{checkpoint} is a fine-tuned (CTC) fairseq checkpoint, which does not hold its letter "
                              f"dictionary: put the dict.ltr.txt it was fine-tuned with beside it ({dict_file})")
    letters = [line.split()[0] for line in dict_file.read_text().splitlines() if line.strip()]
    return CTCOutput((*FAIRSEQ_SPECIALS, *letters), blank=0)


HF_PRETRAINING = ("quantizer.", "project_q.", "project_hid.", "lm_head.")


def hf_model_cfg(config: dict) -> dict:
    """fairseq's Wav2Vec2Config fields from a transformers ``config.json`` (``do_stable_layer_norm``
    is fairseq's ``layer_norm_first``, a ``layer`` extractor norm its ``layer_norm`` mode)."""
    if config.get("feat_extract_activation", "gelu") != "gelu" or config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError("only GELU wav2vec 2.0 models are supported")
    layers = ", ".join(f"({d}, {k}, {s})" for d, k, s in zip(config["conv_dim"], config["conv_kernel"], config["conv_stride"]))
    return {
        "extractor_mode": "layer_norm" if config.get("feat_extract_norm") == "layer" else "default",
        "conv_feature_layers": f"[{layers}]", "conv_bias": bool(config.get("conv_bias", False)),
        "encoder_embed_dim": config["hidden_size"], "encoder_layers": config["num_hidden_layers"],
        "encoder_attention_heads": config["num_attention_heads"], "encoder_ffn_embed_dim": config["intermediate_size"],
        "conv_pos": config["num_conv_pos_embeddings"], "conv_pos_groups": config["num_conv_pos_embedding_groups"],
        "layer_norm_first": bool(config.get("do_stable_layer_norm", False)),
        "final_dim": config.get("proj_codevector_dim", 256), "latent_vars": config.get("num_codevectors_per_group", 320),
        "latent_groups": config.get("num_codevector_groups", 2),
    }


def load_transformers_folder(folder: str | Path, name: str = "wav2vec2_base") -> Wav2Vec2Upstream:
    """A transformers ``Wav2Vec2Model`` / ``Wav2Vec2ForPreTraining`` / ``Wav2Vec2ForCTC`` folder
    (``save_pretrained`` output, or a hub snapshot): ``config.json``, the weights, and for CTC
    ``vocab.json``; input normalisation from ``preprocessor_config.json`` (``do_normalize``)."""
    folder = Path(folder)
    config, state, normalize = read_folder(folder)
    check_family(folder, config, "wav2vec2")
    model_cfg = hf_model_cfg(config)
    weights, skipped = {}, []
    for key, value in state.items():
        new = _rename(key.removeprefix("wav2vec2."), model_cfg["extractor_mode"])
        if new is None:
            skipped.append(key)
        else:
            weights[new] = value
    head, ctc = None, None
    if "lm_head.weight" in state:
        vocab_file = folder / "vocab.json"
        if not vocab_file.is_file():
            raise CheckpointError(f"{folder}: a Wav2Vec2ForCTC folder without vocab.json (the tokenizer's letters)")
        index = json.loads(vocab_file.read_text())
        vocab = [None] * len(index)
        for symbol, i in index.items():
            vocab[i] = symbol
        if None in vocab or len(vocab) != state["lm_head.weight"].shape[0]:
            raise CheckpointError(f"{vocab_file}: {len(index)} symbols for an output layer of {state['lm_head.weight'].shape[0]}")
        ctc = CTCOutput(tuple(vocab), blank=int(config.get("pad_token_id", 0)))
        head = {"weight": state["lm_head.weight"], "bias": state["lm_head.bias"]}
    unknown = [k for k in skipped if not k.startswith(HF_PRETRAINING)]
    if unknown:
        raise CheckpointError(f"{folder}: parameters this loader does not know: {unknown[:5]}")
    return _assemble(folder, model_cfg, {"sample_rate": 16000, "normalize": normalize}, weights, name, ctc, head,
                     missing_ok=tuple(p.removeprefix("model.") for p in Wav2Vec2Upstream.unused_at_inference))


# For the random-init fine-tuned architecture only (a checkpoint brings its own letters):
# fairseq's LibriSpeech letter dictionary, word separator first.
LIBRISPEECH_LETTERS = tuple("|ETAONIHSRDLUMWCFGYPBVK'XJQZ")


def build_wav2vec2_base_960h(name: str = "wav2vec2_base_960h") -> Wav2Vec2Upstream:
    """wav2vec 2.0 Base fine-tuned for CTC on LibriSpeech 960 h: Base plus a letter output layer,
    random weights (offline)."""
    arch = WAV2VEC2_BASE
    return build_wav2vec2(arch["model_cfg"], arch["task_cfg"], name,
                          CTCOutput((*FAIRSEQ_SPECIALS, *LIBRISPEECH_LETTERS)))


def load_ctc_checkpoint(path: str | Path, name: str = "wav2vec2_base_960h") -> Wav2Vec2Upstream:
    """A fine-tuned (CTC) checkpoint; a pretrained one is refused, naming the upstream it is for."""
    upstream = load_wav2vec2_checkpoint(path, name)
    if upstream.ctc is None:
        raise CheckpointError(f"{path} is a pretrained wav2vec 2.0 model without a CTC output layer: load it as "
                              "wav2vec2_base; wav2vec2_base_960h takes a fine-tuned one")
    return upstream


register_family("wav2vec2", lambda arch, name: build_wav2vec2(arch["model_cfg"], arch["task_cfg"], name, arch.get("ctc")))
register_upstream(UpstreamSpec(
    "wav2vec2_base", "wav2vec 2.0 Base (LibriSpeech 960 h, pretrained), 12 layers, 768 dims; s3prl `wav2vec2` "
    "(myQASR's model family)",
    build_wav2vec2_base, load_wav2vec2_checkpoint,
    "https://huggingface.co/s3prl/converted_ckpts/resolve/main/wav2vec_small.pt"))
register_upstream(UpstreamSpec(
    "wav2vec2_base_960h", "wav2vec 2.0 Base fine-tuned for CTC on LibriSpeech 960 h (myQASR's model), its letter "
    "output layer included; a fairseq .pt with its dict.ltr.txt, or a transformers Wav2Vec2ForCTC folder",
    build_wav2vec2_base_960h, load_ctc_checkpoint))

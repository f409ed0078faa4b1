"""Our (quantized) upstreams where s3prl's code expects its own.

- ``S3PRLCompatible(upstream)`` has the attributes of s3prl's ``S3PRLUpstream`` that its
  ``s3prl.nn.Featurizer`` and problem runners read (``num_layers``, ``hidden_sizes``,
  ``downsample_rates``) and the same ``forward(wavs, wavs_len) -> (hidden states, lengths)``.
- ``UpstreamExpert(ckpt)`` is the legacy hub-expert interface used by s3prl's ``run_downstream.py``
  (``forward(list of wavs) -> {"hidden_states": [...]}``); ``ckpt`` is a packed file written by
  ``bench quantize`` / ``save_packed``, or an upstream name.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class S3PRLCompatible(nn.Module):
    def __init__(self, upstream: nn.Module):
        super().__init__()
        self.upstream = upstream

    @property
    def num_layers(self) -> int:
        return self.upstream.num_hidden_states

    @property
    def hidden_sizes(self) -> list[int]:
        return [self.upstream.hidden_size] * self.num_layers

    @property
    def downsample_rates(self) -> list[int]:
        return [self.upstream.downsample_rate] * self.num_layers

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor):
        return self.upstream(wavs, wavs_len)


def load_any(ckpt: str | Path, device: str | None = None) -> nn.Module:
    """A packed quantized file (.safetensors from save_packed) or a registry name."""
    from .loading import load_upstream
    from .upstreams import UPSTREAMS
    from .packed import load_packed

    if str(ckpt) in UPSTREAMS:
        return load_upstream(str(ckpt), device=device)
    return load_packed(ckpt, device=device)


class UpstreamExpert(nn.Module):
    """s3prl's legacy expert: list of 1-D 16 kHz waveforms in, dict of hidden states out."""

    def __init__(self, ckpt: str, model_config: str | None = None, **kwargs):
        super().__init__()
        self.model = load_any(ckpt, device="cpu")

    def get_downsample_rates(self, key: str) -> int:
        return self.model.downsample_rate

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        lengths = torch.tensor([w.numel() for w in wavs], device=wavs[0].device)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        states, _ = self.model(padded, lengths)
        return {"hidden_states": states, "last_hidden_state": states[-1]}

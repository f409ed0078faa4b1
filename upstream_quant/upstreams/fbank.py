"""FBANK: SUPERB's parameter-free baseline row, 80 log-mel bins with first and second deltas.

s3prl's ``fbank`` upstream computes Kaldi filterbanks with torchaudio, which does not import
beside CPU torch here; this is the same recipe with torch ops: 25 ms Hann window, 10 ms hop,
80 mel bins (Slaney scale, shared with the Whisper front end), natural log, deltas of order 2,
mean and variance normalised per utterance. 240 dims at 100 Hz.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..upstream import Upstream, check_batch
from . import UpstreamSpec, register_family, register_upstream
from .whisper import HOP, LogMel


def deltas(x: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Regression deltas over the last axis (frames), as Kaldi/torchaudio compute them."""
    denom = 2 * sum(n * n for n in range(1, width + 1))
    padded = F.pad(x, (width, width), mode="replicate")
    frames = x.shape[-1]
    return sum(n * (padded[..., width + n : width + n + frames] - padded[..., width - n : width - n + frames])
               for n in range(1, width + 1)) / denom


class FbankUpstream(Upstream):
    """One hidden state: (batch, frames, 240) normalised log-mel + deltas, 100 frames per second."""

    group_prefixes: dict[str, str] = {}

    def __init__(self, name: str = "fbank"):
        super().__init__()
        self.name = name
        self.hidden_size = 240
        self.num_hidden_states = 1
        self.downsample_rate = HOP
        self.frontend = LogMel()  # its mel power spectrum; the log and normalisation differ

    def frame_lengths(self, wavs_len: torch.Tensor) -> torch.Tensor:
        return torch.div(wavs_len, HOP, rounding_mode="floor")

    def _one(self, wav: torch.Tensor) -> torch.Tensor:
        logmel = torch.log(torch.clamp(self.frontend.mel_power(wav), min=1e-10))
        feats = torch.cat([logmel, deltas(logmel), deltas(deltas(logmel))], dim=0)
        feats = (feats - feats.mean(-1, keepdim=True)) / (feats.std(-1, keepdim=True) + 1e-5)
        return feats.T

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor):
        check_batch(wavs, wavs_len)
        lengths = self.frame_lengths(wavs_len.to(wavs.device))
        if int(lengths.min()) < 2:
            raise ValueError(f"fbank needs at least {2 * HOP} samples per utterance, got {int(wavs_len.min())}")
        out = wavs.new_zeros(wavs.shape[0], int(lengths.max()), self.hidden_size)
        for i, n in enumerate(wavs_len.tolist()):
            feats = self._one(wavs[i, :n])
            out[i, : feats.shape[0]] = feats
        return [out], [lengths]

    def architecture(self) -> dict:
        return {"family": "fbank"}


def _fbank(name: str, *_) -> FbankUpstream:
    return FbankUpstream(name)


register_family("fbank", _fbank)
register_upstream(UpstreamSpec(
    "fbank", "80 log-mel filterbanks + deltas (240 dims, 100 Hz), no parameters; SUPERB's FBANK row",
    _fbank, _fbank, load_embedded=_fbank))

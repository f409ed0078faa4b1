"""Label-free calibration statistics: each target layer's inputs on a few unlabelled utterances."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn


class CalibrationError(ValueError):
    """Calibration audio is missing, empty or too short."""


@dataclass
class LayerStats:
    """What a method may need from a layer's inputs: X^T X (GPTQ) and a row sample (cosine search)."""

    hessian: torch.Tensor | None = None  # (in, in), sum of x x^T over all input rows
    rows: int = 0
    max_rows: int = 4096
    _parts: list = field(default_factory=list, repr=False)
    _kept: int = 0  # rows held in _parts

    def add(self, x: torch.Tensor, need_hessian: bool, need_sample: bool) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if need_hessian:
            h = x.T @ x
            self.hessian = h if self.hessian is None else self.hessian + h
        if need_sample and self._kept < self.max_rows:
            part = x[: self.max_rows - self._kept].cpu()
            self._parts.append(part)
            self._kept += part.shape[0]
        self.rows += x.shape[0]

    @property
    def sample(self) -> torch.Tensor | None:
        """Up to `max_rows` input rows, in the order they were seen (None if none were kept)."""
        return torch.cat(self._parts) if self._parts else None


MIN_SAMPLES = 400  # 25 ms at 16 kHz: the shortest input the HuBERT CNN turns into a frame
SHORT_SAMPLES = 8000  # 0.5 s: below this a calibration utterance gives a handful of frames (warned)


def check_calibration(wavs: list[torch.Tensor]) -> None:
    if not wavs:
        raise CalibrationError("calibration set is empty: give at least one unlabelled utterance")
    for i, wav in enumerate(wavs):
        if wav.dim() != 1 or wav.numel() < MIN_SAMPLES:
            raise CalibrationError(
                f"calibration utterance {i} is too short or not mono ({tuple(wav.shape)}); "
                f"need a 1-D waveform of at least {MIN_SAMPLES} samples (25 ms at 16 kHz)"
            )
        if not torch.isfinite(wav).all():
            raise CalibrationError(f"calibration utterance {i} has NaN or infinite samples")
    short = sum(1 for w in wavs if w.numel() < SHORT_SAMPLES)
    if short:
        warnings.warn(f"{short} of {len(wavs)} calibration utterance(s) are shorter than {SHORT_SAMPLES / 16000:g} s; "
                      "statistics from a few frames are unreliable")


@torch.no_grad()
def collect_stats(
    model: nn.Module, layers: dict[str, nn.Module], wavs: list[torch.Tensor], need_hessian: bool, need_sample: bool
) -> dict[str, LayerStats]:
    """Run the (full-precision) model over `wavs` one at a time, recording each layer's inputs.

    Only Linear layers get statistics (GPTQ on a convolution would need its inputs unfolded
    into kernel windows); convolutions use the weight-only methods.
    """
    check_calibration(wavs)
    stats = {name: LayerStats() for name, m in layers.items() if isinstance(m, nn.Linear)}
    handles = [
        layers[name].register_forward_pre_hook(lambda _m, args, n=name: stats[n].add(args[0], need_hessian, need_sample))
        for name in stats
    ]
    device = next(model.parameters()).device
    try:
        for wav in wavs:
            wav = wav.to(device).float()
            model(wav[None], torch.tensor([wav.numel()], device=device))
    finally:
        for h in handles:
            h.remove()
    return stats


AUDIO_SUFFIXES = (".wav", ".flac")


def load_calibration_dir(directory: str, count: int | None = 32, sample_rate: int = 16_000) -> list[torch.Tensor]:
    """The first `count` (None: all) audio files (sorted paths, recursive) of `directory` as mono waveforms."""
    from pathlib import Path

    import soundfile as sf

    root = Path(directory)
    if not root.is_dir():
        raise CalibrationError(f"calibration directory not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)[:count]
    if not files:
        raise CalibrationError(f"no .wav/.flac files under {root}")
    wavs = []
    for path in files:
        try:
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as err:  # soundfile raises LibsndfileError/RuntimeError on corrupt files
            raise CalibrationError(f"cannot read calibration file {path}: {err}") from err
        if sr != sample_rate:
            raise CalibrationError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz (resample it first)")
        wavs.append(torch.from_numpy(data.mean(axis=1)))
    check_calibration(wavs)
    return wavs


def read_crop(path, crop: int, rng, sample_rate: int = 16_000) -> torch.Tensor:
    """A random window of at most `crop` samples of an audio file, reading only that window."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        start = rng.randrange(info.frames - crop) if info.frames > crop else 0
        data, sr = sf.read(str(path), start=start, frames=min(crop, info.frames), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError/RuntimeError on corrupt files
        raise CalibrationError(f"cannot read audio file {path}: {err}") from err
    if sr != sample_rate:
        raise CalibrationError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz (resample it first)")
    crop_wav = torch.from_numpy(data.mean(axis=1))
    if not torch.isfinite(crop_wav).all():
        raise CalibrationError(f"{path}: NaN or infinite samples; re-extract or delete the file")
    return crop_wav


def audio_files(directory: str) -> list[str]:
    """Every .wav/.flac under `directory` (sorted, recursive), for streaming."""
    from pathlib import Path

    root = Path(directory)
    if not root.is_dir():
        raise CalibrationError(f"audio directory not found: {root}")
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise CalibrationError(f"no .wav/.flac files under {root}")
    return files

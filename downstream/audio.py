"""Reading speech audio: 16 kHz mono float32, with clear errors for files that cannot be used."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000
log = logging.getLogger(__name__)
_warned: set[str] = set()


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class AudioInfo:
    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def warn_once(key: str, message: str) -> None:
    """Log a warning the first time ``key`` is seen in this process (one per cause, not per file)."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def _check_not_empty(path: str | Path) -> None:
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise AudioError(f"{path}: audio file is empty (0 bytes); re-extract or delete the file")


def info(path: str | Path) -> AudioInfo:
    """Header of an audio file; raises AudioError for unreadable or empty files."""
    _check_not_empty(path)
    try:
        meta = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for corrupt files
        raise AudioError(f"{path}: cannot read audio ({exc}); re-extract or delete the file") from exc
    if meta.frames <= 0:
        raise AudioError(f"{path}: audio file is empty (0 samples); re-extract or delete the file")
    return AudioInfo(frames=int(meta.frames), sample_rate=int(meta.samplerate), channels=int(meta.channels))


def resample(wav: np.ndarray, orig_sr: int, new_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy), the standard anti-aliased method."""
    if orig_sr == new_sr:
        return wav
    from scipy.signal import resample_poly

    g = gcd(orig_sr, new_sr)
    return resample_poly(wav, new_sr // g, orig_sr // g).astype(np.float32)


def read(path: str | Path, start: int = 0, frames: int = -1) -> np.ndarray:
    """Mono float32 samples at 16 kHz; stereo is averaged and other rates resampled (each said once).

    ``start`` and ``frames`` count samples in the file's own rate (used to cut noise segments).
    """
    _check_not_empty(path)
    try:
        wav, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"{path}: cannot read audio ({exc}); re-extract or delete the file") from exc
    if wav.shape[0] == 0:
        raise AudioError(f"{path}: audio file is empty (0 samples); re-extract or delete the file")
    if not np.isfinite(wav).all():  # one NaN/Inf sample would turn every frame of the utterance into NaN
        bad = int((~np.isfinite(wav)).sum())
        raise AudioError(f"{path}: {bad} sample(s) are NaN or infinite; re-extract or delete the file")
    if wav.shape[1] > 1:
        warn_once(f"channels{wav.shape[1]}", f"{path}: {wav.shape[1]} channels; downmixing to mono (said once)")
        wav = wav.mean(axis=1, keepdims=True)
    wav = wav[:, 0]
    if sr != SAMPLE_RATE:
        warn_once(f"rate{sr}", f"{path}: sample rate {sr} Hz; resampling to {SAMPLE_RATE} Hz (said once per rate)")
        wav = resample(wav, sr)
    return np.ascontiguousarray(wav, dtype=np.float32)


def scan(paths: list[Path], cache_name: str) -> dict[Path, AudioInfo | AudioError]:
    """Headers of many files, cached by (size, mtime) so a 28k-file split is read once, not per run.

    Errors are returned, not raised, so a loader can report every bad file at once.
    """
    import json

    from upstream_quant.io import cache_dir, write_atomic

    cache_file = cache_dir("audio-index", f"{cache_name}.json")
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    out: dict[Path, AudioInfo | AudioError] = {}
    fresh: dict[str, list] = {}
    for path in paths:
        try:
            st = path.stat()
        except OSError as exc:
            out[path] = AudioError(f"{path}: cannot stat ({exc})")
            continue
        key, stamp = str(path), [st.st_size, st.st_mtime_ns]
        hit = cached.get(key)
        if hit and hit[:2] == stamp:
            out[path] = AudioInfo(*hit[2:])
            fresh[key] = hit
            continue
        try:
            meta = info(path)
        except AudioError as exc:
            out[path] = exc
            continue
        out[path] = meta
        fresh[key] = stamp + [meta.frames, meta.sample_rate, meta.channels]
    if fresh != cached:
        try:
            write_atomic(cache_file, json.dumps(fresh))
        except OSError:
            pass  # a read-only cache only costs speed
    return out

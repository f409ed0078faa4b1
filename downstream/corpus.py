"""What every speech reader returns: utterances plus an account of what was dropped and why."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Utterance:
    """One audio item. ``transcript`` is normalised text (ASR) and ``label`` a class name (KS).

    ``offset``/``frames`` cut a segment out of a longer file (Speech Commands' silence class).
    """

    id: str
    path: Path
    split: str
    speaker: str
    duration: float
    transcript: str = ""
    label: str = ""
    gender: str | None = None
    offset: int = 0
    frames: int = -1


@dataclass
class DropReport:
    """Counts of skipped items per reason, with a few examples each: nothing is dropped silently."""

    source: str
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, item: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(item)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return f"{self.source}: nothing dropped"
        lines = [f"{self.source}: dropped {self.total} item(s)"]
        for reason, n in self.counts.most_common():
            lines.append(f"  {n} x {reason}, e.g. {'; '.join(self.examples[reason])}")
        return "\n".join(lines)

    def log(self) -> None:
        if self.total:
            log.warning(self.summary())


@dataclass
class Corpus:
    """``trials``: verification pairs (1 same speaker or 0, utterance id, utterance id) of a
    split that is scored on pairs, not utterances (VoxCeleb1's ``sv_test``); None elsewhere."""

    utterances: list[Utterance]
    dropped: DropReport
    trials: list[tuple[int, str, str]] | None = None

    def __len__(self) -> int:
        return len(self.utterances)

    def sample(self, count: int, seed: int = 0) -> list[Utterance]:
        """``count`` utterances drawn at random (seeded) across all speakers, in corpus order;
        calibrating a group on its first files would mean calibrating on one speaker."""
        import random

        if count >= len(self.utterances):
            return list(self.utterances)
        keep = set(random.Random(seed).sample(range(len(self.utterances)), count))
        return [u for i, u in enumerate(self.utterances) if i in keep]

    def waveforms(self, count: int, seed: int = 0) -> list:
        """The audio of ``count`` utterances drawn as `sample` draws them, as 1-D float32 tensors:
        the unlabelled calibration audio the commands and the runner hand to the methods."""
        import torch

        from . import audio

        return [torch.from_numpy(audio.read(u.path, start=u.offset, frames=u.frames)) for u in self.sample(count, seed)]

    @property
    def hours(self) -> float:
        return sum(u.duration for u in self.utterances) / 3600


T = TypeVar("T")


def readable(items: list[T], path_of: Callable[[T], Path], root: Path, name: str, report: DropReport,
             reason: str = "unreadable audio", where: Callable[[T], str] | None = None) -> list[tuple[T, "object"]]:
    """Each of ``items`` whose audio file has a readable header, with that header
    (`downstream.audio.AudioInfo`), in order; each other item is counted in ``report`` under
    ``reason`` (with ``where(item)`` before the error, when given). Headers are read once per
    file and cached under ``name`` and ``root`` (`downstream.audio.scan`)."""
    from . import audio

    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]
    headers = audio.scan(sorted({path_of(x) for x in items}), f"{name}-{key}")
    out = []
    for x in items:
        meta = headers[path_of(x)]
        if isinstance(meta, audio.AudioError):
            report.add(reason, f"{where(x)}: {meta}" if where else str(meta))
        else:
            out.append((x, meta))
    return out


# Data layout name -> reader(data_config, which split) -> Corpus. Each reader module registers
# its layout; the task modules import the readers they use (downstream.datamodule.DataConfig).
LAYOUTS: dict[str, Callable[..., Corpus]] = {}


def register_layout(name: str, reader: Callable[..., Corpus]) -> None:
    LAYOUTS[name] = reader

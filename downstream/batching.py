"""Audio datasets and length-bucketed batches: padding cost and memory stay bounded for long utterances.

torch's samplers batch by count only; SUPERB halves batches of long utterances by hand.
Here a batch is bounded by padded seconds (batch size x longest item), which is what
memory actually scales with, so this one sampler is written here.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from . import audio
from .corpus import Utterance


class SpeechDataset(Dataset):
    """Waveforms of utterances; targets are the task's business, so items carry the Utterance."""

    def __init__(self, utterances: Sequence[Utterance]):
        self.utterances = list(utterances)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Utterance]:
        utt = self.utterances[i]
        wav = audio.read(utt.path, start=utt.offset, frames=utt.frames)
        return torch.from_numpy(wav), utt


def collate(items: list[tuple[torch.Tensor, Utterance]]) -> dict:
    """Zero-pad waveforms to the longest: ``wavs`` [B, T], ``lengths`` [B], ``utterances``."""
    lengths = torch.tensor([w.numel() for w, _ in items], dtype=torch.long)
    wavs = torch.zeros(len(items), int(lengths.max()))
    for i, (w, _) in enumerate(items):
        wavs[i, : w.numel()] = w
    return {"wavs": wavs, "lengths": lengths, "utterances": [u for _, u in items]}


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar-length items, bounded by padded seconds and by count, in seeded random order.

    ``num_replicas``/``rank`` shard the batches for multi-GPU runs (every rank gets the same
    number of batches); call ``set_epoch`` so each epoch is shuffled differently.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        max_batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        epoch_source: Callable[[], int] | None = None,
    ):
        if max_batch_size < 1 or max_batch_seconds <= 0:
            raise ValueError("max_batch_size must be >= 1 and max_batch_seconds > 0")
        too_long = [i for i, d in enumerate(durations) if d > max_batch_seconds]
        if too_long:
            raise ValueError(
                f"{len(too_long)} item(s) are longer than max_batch_seconds={max_batch_seconds} "
                f"(longest {max(durations):.1f} s); raise max_batch_seconds or filter long utterances"
            )
        self.durations = np.asarray(durations, dtype=np.float64)
        self.max_batch_seconds, self.max_batch_size = max_batch_seconds, max_batch_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch_source = epoch_source

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> "LengthBucketSampler":
        """Lightning calls ``batch_sampler.sampler.set_epoch`` every epoch; this one is its own sampler."""
        return self

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        # Jitter the sort key a little so batch composition changes between epochs.
        jitter = [1 + (rng.random() - 0.5) * 0.1 if self.shuffle else 1.0 for _ in self.durations]
        order = sorted(range(len(self.durations)), key=lambda i: self.durations[i] * jitter[i])
        batches, current, longest = [], [], 0.0
        for i in order:
            d = float(self.durations[i])
            grown = max(longest, d)
            if current and (len(current) >= self.max_batch_size or grown * (len(current) + 1) > self.max_batch_seconds):
                batches.append(current)
                current, grown = [], d
            current.append(i)
            longest = grown
        if current:
            batches.append(current)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        if self.epoch_source is not None:  # the trainer's epoch, also right on the first epoch of a resumed run
            self.epoch = self.epoch_source()
        batches = self._batches()
        per_rank = math.ceil(len(batches) / self.num_replicas)
        batches = (batches * self.num_replicas)[: per_rank * self.num_replicas]  # pad by repeating
        return iter(batches[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return math.ceil(len(self._batches()) / self.num_replicas)


class BalancedSampler(WeightedRandomSampler):
    """Class-balanced sampling with replacement (SUPERB's KS), reseeded per epoch for exact resumes.

    ``num_replicas``/``rank`` shard it for DDP: every rank draws the same seeded sequence and
    keeps every ``num_replicas``-th item from ``rank``, so ranks see different batches."""

    def __init__(self, labels: Sequence[str], seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 epoch_source: Callable[[], int] | None = None):
        counts = {c: list(labels).count(c) for c in set(labels)}
        weights = torch.tensor([1.0 / counts[c] for c in labels], dtype=torch.double)
        self.seed, self.num_replicas, self.rank, self.epoch_source = seed, num_replicas, rank, epoch_source
        super().__init__(weights, len(labels), generator=torch.Generator().manual_seed(seed))

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)

    def __iter__(self) -> Iterator[int]:
        if self.epoch_source is not None:
            self.set_epoch(self.epoch_source())
        drawn = list(super().__iter__())
        return iter(drawn[self.rank : len(self) * self.num_replicas : self.num_replicas])

    def __len__(self) -> int:  # equal on every rank (DDP steps in lockstep): the tail is dropped
        return self.num_samples // self.num_replicas if self.num_replicas > 1 else self.num_samples

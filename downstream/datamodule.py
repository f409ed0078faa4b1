"""LightningDataModule over the readers: which corpus, which splits, and how batches are formed."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
from torch.utils.data import BatchSampler, DataLoader

from .batching import BalancedSampler, LengthBucketSampler, SpeechDataset, collate
from .corpus import LAYOUTS, Corpus


@dataclass(frozen=True)
class DataConfig:
    """Where the data is. ``layout``: a registered layout (`corpus.LAYOUTS`: 'librispeech',
    'speech_commands', 'fluent_speech_commands'); ``train``/``dev``/``test``: that layout's split
    names; ``speakers``/``gender``: keep only those speakers (layouts that know them)."""

    layout: str
    root: str
    train: tuple[str, ...] = ("train-clean-100",)
    dev: tuple[str, ...] = ("dev-clean",)
    test: tuple[str, ...] = ("test-clean",)
    test_root: str | None = None  # Speech Commands' separate test set
    speakers: tuple[str, ...] | None = None
    gender: str | None = None

    def load(self, which: str) -> Corpus:
        import downstream.tasks  # noqa: F401  (the task modules register the layouts they read)

        if self.layout not in LAYOUTS:
            raise ValueError(f"data layout must be one of {', '.join(sorted(LAYOUTS))}, got {self.layout!r}")
        return LAYOUTS[self.layout](self, which)


def loader_workers(requested: int | None) -> int:
    """Data-loading processes: as requested, else up to 8 beside a GPU (decoding FLAC in the
    training process would starve it) and none on a CPU-only machine, where the cores are
    busy with the model and features are usually cached."""
    import os

    import torch

    if requested is not None:
        return requested
    return min(8, (os.cpu_count() or 1) - 1) if torch.cuda.is_available() else 0


class SpeechDataModule(L.LightningDataModule):
    """Length-bucketed batches, or class-balanced ones by utterance label (``balanced``: KS, as
    SUPERB samples it)."""

    def __init__(self, data: DataConfig, batch_size: int, max_batch_seconds: float, seed: int = 0,
                 balanced: bool = False, num_workers: int | None = None):
        super().__init__()
        self.data, self.batch_size, self.max_batch_seconds = data, batch_size, max_batch_seconds
        self.seed, self.balanced, self.num_workers = seed, balanced, loader_workers(num_workers)
        self.corpora: dict[str, Corpus] = {}

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "dev"), "validate": ("dev",), "test": ("test",)}.get(stage or "fit", ("train", "dev", "test"))
        for which in needed:
            if which not in self.corpora:
                self.corpora[which] = self.data.load(which)

    def _loader(self, which: str, shuffle: bool) -> DataLoader:
        corpus = self.corpora[which]
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        # Lightning creates a resumed run's first iterator before it calls set_epoch (and before
        # current_epoch is brought up to date): the samplers read the epoch about to be processed
        # themselves when an epoch's iteration starts.
        epoch = (lambda: self.trainer.fit_loop.epoch_progress.current.processed) if self.trainer is not None else None
        if self.balanced and shuffle:
            sampler = BalancedSampler([u.label for u in corpus.utterances], self.seed, num_replicas=world, rank=rank,
                                      epoch_source=epoch)
            batches = BatchSampler(sampler, self.batch_size, drop_last=False)
        else:
            batches = LengthBucketSampler([u.duration for u in corpus.utterances], self.max_batch_seconds, self.batch_size,
                                          shuffle=shuffle, seed=self.seed, num_replicas=world if shuffle else 1,
                                          rank=rank if shuffle else 0, epoch_source=epoch if shuffle else None)
        return DataLoader(SpeechDataset(corpus.utterances), batch_sampler=batches, collate_fn=collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0 and shuffle)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("dev", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)

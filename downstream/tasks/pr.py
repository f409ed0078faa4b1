"""PR (SUPERB): phoneme recognition, CTC over phones with a linear head; phone error rate (PER).

Phones come from the word transcripts through a lexicon (downstream.phonemes): SUPERB's
LibriSpeech lexicon file on a GPU box, espeak-ng's phonemizer on the synthetic corpora. The phone
inventory is read from the training transcripts and kept with the checkpoint."""

from __future__ import annotations

import torch
from torch import nn

from .. import librispeech, metrics  # noqa: F401  (librispeech: registers its layout)
from ..features import FrozenUpstream
from ..phonemes import ESPEAK, Phonemizer
from .base import TaskConfig, TaskSpec, register_task
from .ctc import CTCTask


class LinearCTCHead(nn.Module):
    """SUPERB's PR head: one linear layer from features to phone log-probabilities."""

    def __init__(self, in_dim: int, vocab: int):
        super().__init__()
        self.out = nn.Linear(in_dim, vocab)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.out(x).log_softmax(-1)


class PRTask(CTCTask):
    metric_name, metric_mode = "per", "min"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        self.vocab = ("<blank>", *self.data_labels("phones", "phone inventory"))
        self.index = {p: i for i, p in enumerate(self.vocab)}
        self.phonemizer = Phonemizer(config.lexicon or ESPEAK)
        self.head = LinearCTCHead(upstream.hidden_size, len(self.vocab))

    def targets(self, utterance) -> list[int]:
        # a phone the training transcripts never had cannot be a target (training sees only those)
        return [self.index[p] for p in self.phonemizer.phones(utterance.transcript) if p in self.index]

    def reference(self, utterance) -> str:
        return " ".join(self.phonemizer.phones(utterance.transcript))

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.vocab[i] for i in ids)

    @staticmethod
    def unit_scores(pairs: list[tuple[str, str]]) -> dict[str, metrics.Units]:
        """Phone edits and reference phones per utterance (jiwer's WER on phone strings, summed: corpus PER)."""
        return {"per": metrics.word_edits([r for r, _ in pairs], [h for _, h in pairs])}


def prepare(config: TaskConfig, train) -> TaskConfig:
    """The phone inventory of the training transcripts (sorted), through the config's lexicon."""
    phonemizer = Phonemizer(config.lexicon or ESPEAK)
    phonemizer.add([u.transcript for u in train.utterances])
    phones = sorted({p for u in train.utterances for p in phonemizer.phones(u.transcript)})
    return config.with_(lexicon=config.lexicon or ESPEAK, labels={"phones": phones})


def check(config: TaskConfig) -> str | None:
    """A lexicon that is not there (a file, or espeak-ng for "espeak")."""
    import shutil
    from pathlib import Path

    lexicon = config.lexicon or ESPEAK
    if lexicon == ESPEAK:
        return None if shutil.which("espeak-ng") else "lexicon 'espeak' needs espeak-ng (scripts/setup.sh installs it)"
    return None if Path(lexicon).is_file() else f"lexicon {lexicon}: no such file (--set pr.lexicon=PATH)"


def superb_pr() -> TaskConfig:
    """SUPERB's PR recipe: linear head, Adam 1e-2, 100k steps, batch 16 (no SpecAugment)."""
    return TaskConfig(task="pr", lr=1e-2, max_steps=100_000, batch_size=16, specaug=False)


def mini_pr() -> TaskConfig:
    """CPU scale model: SUPERB's head and learning rate, 300 steps on cached features (Whisper
    tiny.en on the synthetic digits: under 1 % PER in about 15 s on 2 cores)."""
    return TaskConfig(task="pr", lr=1e-2, max_steps=300, batch_size=16, specaug=False, max_batch_seconds=120.0,
                      val_every_epochs=4, cache_features=True, cache_mb=1024, normalize=True)


SPEC = register_task(TaskSpec(
    name="pr", title="PR", module=PRTask, metrics=("per",), axis_label="PER (%)", layouts=("librispeech",),
    presets={"superb_pr": superb_pr, "mini_pr": mini_pr}, prepare=prepare, check=check))

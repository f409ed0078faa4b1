"""Utterance classification shared by the pooled-head tasks (KS's keywords, SID's speakers, ER's
emotions): SUPERB's Linear(D->256), mean pooling over valid frames, Linear(256->classes),
cross-entropy, accuracy. Not a task itself."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import metrics
from ..features import FrozenUpstream
from ..heads import PooledHead
from .base import DownstreamTask, TaskConfig


class ClassificationTask(DownstreamTask):
    """Subclasses give ``classes(config)``: the class names, in output order."""

    metric_name, metric_mode = "acc", "max"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        self.names = list(self.classes(config))
        self.index = {c: i for i, c in enumerate(self.names)}
        self.head = PooledHead(upstream.hidden_size, len(self.names), 256)

    def classes(self, config: TaskConfig) -> list[str]:
        raise NotImplementedError

    def loss(self, x, lengths, batch):
        labels = torch.tensor([self.index[u.label] for u in batch["utterances"]], device=x.device)
        return F.cross_entropy(self.head(x, lengths), labels)

    def predict(self, batch) -> list[tuple[str, str]]:
        x, lengths = self.features(batch)
        best = self.head(x, lengths).argmax(-1).tolist()
        return [(u.label, self.names[b]) for u, b in zip(batch["utterances"], best)]

    @staticmethod
    def unit_scores(pairs: list[tuple[str, str]]) -> dict[str, metrics.Units]:
        return {"acc": metrics.correct([r == h for r, h in pairs])}


def training_labels(key: str) -> Callable[[TaskConfig, object], TaskConfig]:
    """A `TaskSpec.prepare` that keeps the training utterances' labels, sorted, as
    ``config.labels[key]`` (SID's classes, ASV's AM-softmax classes: the training speakers)."""
    def prepare(config: TaskConfig, train) -> TaskConfig:
        return config.with_(labels={key: sorted({u.label for u in train.utterances})})
    return prepare

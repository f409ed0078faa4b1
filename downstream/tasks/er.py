"""ER (SUPERB): four-class emotion recognition on IEMOCAP, s3prl's emotion expert: a 256-dim
projection, mean pooling and a linear layer over neutral, happy (with excited), angry and sad,
cross-entropy; accuracy, one leave-one-session-out fold per data table (SUPERB averages the
five)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import metrics
from ..features import FrozenUpstream
from ..heads import PooledHead
from ..iemocap import CLASSES
from .base import DownstreamTask, TaskConfig, TaskSpec, register_task


class ERTask(DownstreamTask):
    metric_name, metric_mode = "acc", "max"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        self.head = PooledHead(upstream.hidden_size, len(CLASSES), 256)
        self.index = {c: i for i, c in enumerate(CLASSES)}

    def loss(self, x, lengths, batch):
        labels = torch.tensor([self.index[u.label] for u in batch["utterances"]], device=x.device)
        return F.cross_entropy(self.head(x, lengths), labels)

    def predict(self, batch) -> list[tuple[str, str]]:
        x, lengths = self.features(batch)
        best = self.head(x, lengths).argmax(-1).tolist()
        return [(u.label, CLASSES[b]) for u, b in zip(batch["utterances"], best)]

    @staticmethod
    def unit_scores(pairs: list[tuple[str, str]]) -> dict[str, metrics.Units]:
        return {"acc": metrics.correct([r == h for r, h in pairs])}


def superb_er() -> TaskConfig:
    """s3prl's emotion config: Adam 1e-4, 30k steps, gradient clipping 1, batches of 4 with 8
    accumulated (here one batch of 32), no SpecAugment."""
    return TaskConfig(task="er", lr=1e-4, max_steps=30_000, batch_size=32, specaug=False, max_batch_seconds=320.0)


SPEC = register_task(TaskSpec(
    name="er", title="ER", module=ERTask, metrics=("acc",), axis_label="accuracy (%)", layouts=("iemocap",),
    presets={"superb_er": superb_er}))

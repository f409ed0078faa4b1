"""KS (SUPERB): 12-way keyword spotting on Speech Commands v0.01, mean-pooled linear head,
class-balanced batches; accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import metrics
from ..features import FrozenUpstream
from ..heads import PooledHead
from ..speech_commands import CLASSES
from .base import DownstreamTask, TaskConfig, TaskSpec, register_task


class KSTask(DownstreamTask):
    metric_name, metric_mode = "acc", "max"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        self.head = PooledHead(upstream.hidden_size, len(CLASSES), 256)
        self.class_index = {c: i for i, c in enumerate(CLASSES)}

    def loss(self, x, lengths, batch):
        labels = torch.tensor([self.class_index[u.label] for u in batch["utterances"]], device=x.device)
        return F.cross_entropy(self.head(x, lengths), labels)

    def predict(self, batch) -> list[tuple[str, str]]:
        x, lengths = self.features(batch)
        pred = self.head(x, lengths).argmax(-1).tolist()
        return [(u.label, CLASSES[p]) for u, p in zip(batch["utterances"], pred)]

    @staticmethod
    def unit_scores(pairs: list[tuple[str, str]]) -> dict[str, metrics.Units]:
        return {"acc": metrics.correct([r == h for r, h in pairs])}


def superb_ks() -> TaskConfig:
    return TaskConfig(task="ks", batch_size=32, specaug=False, max_batch_seconds=64.0)


SPEC = register_task(TaskSpec(
    name="ks", title="KS", module=KSTask, metrics=("acc",), axis_label="accuracy (%)", layouts=("speech_commands",),
    presets={"superb_ks": superb_ks}, balanced=True))

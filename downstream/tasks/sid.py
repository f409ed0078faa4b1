"""SID (SUPERB): speaker identification on VoxCeleb1's identification split, s3prl's voxceleb1
expert: a 256-dim projection, mean pooling over frames and a linear layer over the speakers,
cross-entropy; accuracy. The speakers are read from the training data and kept with the
checkpoint (1,251 on VoxCeleb1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import metrics
from .. import voxceleb1  # noqa: F401  (registers its layout)
from ..features import FrozenUpstream
from ..heads import PooledHead
from .base import DownstreamTask, TaskConfig, TaskSpec, register_task


class SIDTask(DownstreamTask):
    metric_name, metric_mode = "acc", "max"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        self.speakers = list(self.data_labels("speakers", "speaker list"))
        self.index = {s: i for i, s in enumerate(self.speakers)}
        self.head = PooledHead(upstream.hidden_size, len(self.speakers), 256)

    def loss(self, x, lengths, batch):
        labels = torch.tensor([self.index[u.label] for u in batch["utterances"]], device=x.device)
        return F.cross_entropy(self.head(x, lengths), labels)

    def predict(self, batch) -> list[tuple[str, str]]:
        x, lengths = self.features(batch)
        best = self.head(x, lengths).argmax(-1).tolist()
        return [(u.label, self.speakers[b]) for u, b in zip(batch["utterances"], best)]

    @staticmethod
    def unit_scores(pairs: list[tuple[str, str]]) -> dict[str, metrics.Units]:
        return {"acc": metrics.correct([r == h for r, h in pairs])}


def prepare(config: TaskConfig, train) -> TaskConfig:
    """The training data's speakers (sorted): the classes."""
    return config.with_(labels={"speakers": sorted({u.label for u in train.utterances})})


def superb_sid() -> TaskConfig:
    """s3prl's voxceleb1 config: Adam 1e-4, 200k steps, gradient clipping 1, batches of 8 with 4
    accumulated (here one batch of 32), no SpecAugment."""
    return TaskConfig(task="sid", lr=1e-4, batch_size=32, specaug=False, max_batch_seconds=320.0)


def mini_sid() -> TaskConfig:
    """CPU scale model (as mini_ic): learning rate 2e-3, 500 steps on cached, layer-normed features."""
    return TaskConfig(task="sid", lr=2e-3, max_steps=500, batch_size=32, specaug=False, max_batch_seconds=160.0,
                      val_every_epochs=4, cache_features=True, cache_mb=1024, normalize=True)


SPEC = register_task(TaskSpec(
    name="sid", title="SID", module=SIDTask, metrics=("acc",), axis_label="accuracy (%)", layouts=("voxceleb1",),
    presets={"superb_sid": superb_sid, "mini_sid": mini_sid}, prepare=prepare))

"""ER (SUPERB): four-class emotion recognition on IEMOCAP, s3prl's emotion expert: a 256-dim
projection, mean pooling and a linear layer over neutral, happy (with excited), angry and sad,
cross-entropy; accuracy, one leave-one-session-out fold per data table (SUPERB averages the
five)."""

from __future__ import annotations

from ..iemocap import CLASSES
from .base import TaskConfig, TaskSpec, register_task
from .classify import ClassificationTask


class ERTask(ClassificationTask):
    def classes(self, config: TaskConfig) -> list[str]:
        return list(CLASSES)


def superb_er() -> TaskConfig:
    """s3prl's emotion config: Adam 1e-4, 30k steps, gradient clipping 1, batches of 4 with 8
    accumulated (here one batch of 32), no SpecAugment."""
    return TaskConfig(task="er", lr=1e-4, max_steps=30_000, batch_size=32, specaug=False, max_batch_seconds=320.0)


SPEC = register_task(TaskSpec(
    name="er", title="ER", module=ERTask, metrics=("acc",), axis_label="accuracy (%)", layouts=("iemocap",),
    presets={"superb_er": superb_er}))

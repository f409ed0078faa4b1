"""KS (SUPERB): 12-way keyword spotting on Speech Commands v0.01, mean-pooled linear head,
class-balanced batches; accuracy."""

from __future__ import annotations

from ..speech_commands import CLASSES
from .base import TaskConfig, TaskSpec, register_task
from .classify import ClassificationTask


class KSTask(ClassificationTask):
    def classes(self, config: TaskConfig) -> list[str]:
        return list(CLASSES)


def superb_ks() -> TaskConfig:
    return TaskConfig(task="ks", batch_size=32, specaug=False, max_batch_seconds=64.0)


SPEC = register_task(TaskSpec(
    name="ks", title="KS", module=KSTask, metrics=("acc",), axis_label="accuracy (%)", layouts=("speech_commands",),
    presets={"superb_ks": superb_ks}, balanced=True))

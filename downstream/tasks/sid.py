"""SID (SUPERB): speaker identification on VoxCeleb1's identification split, s3prl's voxceleb1
expert: a 256-dim projection, mean pooling over frames and a linear layer over the speakers,
cross-entropy; accuracy. The speakers are read from the training data and kept with the
checkpoint (1,251 on VoxCeleb1)."""

from __future__ import annotations

from .. import voxceleb1  # noqa: F401  (registers its layout)
from .base import TaskConfig, TaskSpec, register_task
from .classify import ClassificationTask, training_labels


class SIDTask(ClassificationTask):
    def classes(self, config: TaskConfig) -> list[str]:
        return self.data_labels("speakers", "speaker list")


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
    presets={"superb_sid": superb_sid, "mini_sid": mini_sid}, prepare=training_labels("speakers")))

"""ASV (SUPERB): speaker verification on VoxCeleb1, s3prl's sv_voxceleb1 expert (amsoftmax.yaml):
an x-vector head trained to classify the training speakers with additive-margin softmax; each
test utterance is embedded, each trial scored by the cosine of its two embeddings, and the trial
list by its equal error rate (EER, the headline) and minimum detection cost (minDCF).

A test unit is a trial, not an utterance: a row keeps each trial's (score, target) pair and the
bootstrap resamples trials (clustered by their first utterance, which several trials share)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import metrics
from .. import voxceleb1  # noqa: F401  (registers its layout)
from ..features import FrozenUpstream
from ..heads import AMSoftmax, XVectorHead
from .base import DownstreamTask, TaskConfig, TaskSpec, register_task
from .classify import training_labels


class ASVTask(DownstreamTask):
    metric_name, metric_mode = "eer", "min"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        self.speakers = list(self.data_labels("speakers", "training speaker list"))
        self.index = {s: i for i, s in enumerate(self.speakers)}
        self.head = XVectorHead(upstream.hidden_size, config.proj, config.hidden)
        self.objective = AMSoftmax(config.proj, len(self.speakers))
        self._trials: list[tuple[int, str, str]] = []

    def loss(self, x, lengths, batch):
        labels = torch.tensor([self.index[u.label] for u in batch["utterances"]], device=x.device)
        return self.objective(self.head(x, lengths), labels)

    def predict(self, batch) -> list[tuple[str, torch.Tensor]]:
        """(utterance id, its length-normalised embedding) per utterance."""
        x, lengths = self.features(batch)
        emb = F.normalize(self.head.embed(x, lengths).float(), dim=-1).cpu()
        return [(u.id, e) for u, e in zip(batch["utterances"], emb)]

    def _split_trials(self, which: str) -> None:
        corpus = self.trainer.datamodule.corpora[which]
        if not corpus.trials:
            raise ValueError(f"ASV's {which} split has no verification trials; read it as a VoxCeleb1 sv_dev/sv_test split")
        self._trials = list(corpus.trials)
        self._outputs, self._ids = [], []

    def on_validation_epoch_start(self):
        self._split_trials("dev")

    def on_test_epoch_start(self):
        self._split_trials("test")

    def _scored(self) -> list[tuple[float, int]]:
        emb = dict(self._outputs)
        return [(float(emb[a] @ emb[b]), t) for t, a, b in self._trials]

    def score(self, _pairs) -> dict[str, float]:
        return metrics.totals(self.unit_scores(self._scored()))

    @staticmethod
    def unit_scores(scored: list[tuple[float, int]]) -> dict[str, metrics.Units]:
        units = metrics.trials([s for s, _ in scored], [t for _, t in scored])
        return {"eer": units, "min_dcf": units}

    def test_scored(self):
        """One unit per trial, "enrolment|test" ids, clustered by the enrolment utterance."""
        units = self.unit_scores(self._scored())
        return [f"{a}|{b}" for _, a, b in self._trials], [a for _, a, _ in self._trials], units


def superb_asv() -> TaskConfig:
    """s3prl's amsoftmax.yaml: x-vector width 512 (``proj``) and 1,500 before pooling
    (``hidden``), AdamW 1e-4 (Adam here), 200k steps, batches of 10 with 5 accumulated (here one
    batch of 50), gradient clipping 1000, no SpecAugment."""
    return TaskConfig(task="asv", proj=512, hidden=1500, lr=1e-4, batch_size=50, grad_clip=1000.0, specaug=False,
                      max_batch_seconds=400.0)


def mini_asv() -> TaskConfig:
    """CPU scale model: the x-vector 128 wide and 256 before pooling (SUPERB's 512 and 1,500 take
    about a second a step on 2 cores; this about 0.1 s), learning rate 1e-3, 400 steps on cached,
    layer-normed features."""
    return TaskConfig(task="asv", proj=128, hidden=256, lr=1e-3, max_steps=400, batch_size=32, specaug=False,
                      max_batch_seconds=160.0, val_every_epochs=4, cache_features=True, cache_mb=1024, normalize=True,
                      grad_clip=1000.0)


SPEC = register_task(TaskSpec(
    name="asv", title="ASV", module=ASVTask, metrics=("eer", "min_dcf"), axis_label="EER (%)", layouts=("voxceleb1",),
    presets={"superb_asv": superb_asv, "mini_asv": mini_asv}, prepare=training_labels("speakers")))

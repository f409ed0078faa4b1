"""SD (SUPERB): two-speaker diarization on Libri2Mix, s3prl's diarization expert: a one-layer LSTM
of 512 and a linear layer give each frame one activity logit per speaker, trained with
permutation-invariant binary cross-entropy; the diarization error rate (DER: missed speech, false
alarms and speaker confusion over the reference speech, speakers mapped as best they fit, no
collar) at threshold 0.5, summed over recordings."""

from __future__ import annotations

from itertools import permutations

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from ..diarization import decode_segments
from ..features import FrozenUpstream
from .base import DownstreamTask, TaskConfig, TaskSpec, register_task

SPEAKERS = 2  # Libri2Mix: at most two speakers a recording (s3prl's num_speakers)
THRESHOLD = 0.5


class DiarizationHead(nn.Module):
    """s3prl's diarization model: LSTM(D -> hidden), then Linear(hidden -> speakers) logits."""

    def __init__(self, in_dim: int, hidden: int, speakers: int = SPEAKERS):
        super().__init__()
        self.rnn = nn.LSTM(in_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, speakers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x.float())[0])


def activity(label: str, frames: int, duration: float) -> torch.Tensor:
    """(frames, SPEAKERS) 0/1 reference: frame t covers [t, t + 1) x duration / frames; speakers in
    order of first appearance."""
    out = torch.zeros(frames, SPEAKERS)
    order: list[str] = []
    step = duration / max(frames, 1)
    for spk, start, end in decode_segments(label):
        if spk not in order:
            order.append(spk)
        k = order.index(spk)
        if k >= SPEAKERS:
            raise ValueError(f"recording with more than {SPEAKERS} speakers ({order}); SD here is two-speaker")
        out[round(start / step): round(end / step), k] = 1
    return out


def pit_bce(logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Permutation-invariant BCE (s3prl's pit_loss): per recording the speaker order that fits
    best, summed over frames, over all valid frames."""
    mask = (torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths[:, None]).float()
    per = []
    for p in permutations(range(SPEAKERS)):
        loss = F.binary_cross_entropy_with_logits(logits, labels[:, :, list(p)], reduction="none").mean(-1)
        per.append((loss * mask).sum(1))
    return torch.stack(per, 1).min(1).values.sum() / mask.sum()


def der_units(pred: torch.Tensor, ref: torch.Tensor) -> tuple[int, int]:
    """(error frames, reference speaker frames) of one recording under the best speaker mapping:
    per frame max(reference, system speakers) - correctly mapped ones, as NIST's DER counts missed
    speech, false alarm and confusion."""
    best = None
    for p in permutations(range(SPEAKERS)):
        correct = int((pred[:, list(p)] * ref).sum())
        best = correct if best is None else max(best, correct)
    errors = int(torch.maximum(pred.sum(1), ref.sum(1)).sum()) - best
    return errors, int(ref.sum())


class SDTask(DownstreamTask):
    metric_name, metric_mode = "der", "min"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        self.head = DiarizationHead(upstream.hidden_size, config.hidden)

    def _labels(self, batch, frames: int) -> torch.Tensor:
        rows = []
        for u, n in zip(batch["utterances"], self._frames):
            lab = activity(u.label, int(n), u.duration)
            rows.append(F.pad(lab, (0, 0, 0, frames - lab.shape[0])))
        return torch.stack(rows)

    def loss(self, x, lengths, batch):
        self._frames = lengths.tolist()
        return pit_bce(self.head(x), self._labels(batch, x.shape[1]).to(x.device), lengths)

    def predict(self, batch) -> list[tuple[str, tuple[int, int]]]:
        x, lengths = self.features(batch)
        pred = (torch.sigmoid(self.head(x)) > THRESHOLD).float().cpu()
        out = []
        for i, (u, n) in enumerate(zip(batch["utterances"], lengths.tolist())):
            out.append((u.id, der_units(pred[i, :n], activity(u.label, n, u.duration))))
        return out

    @staticmethod
    def unit_scores(pairs: list[tuple[str, tuple[int, int]]]) -> dict[str, metrics.Units]:
        return {"der": [units for _, units in pairs]}


def superb_sd() -> TaskConfig:
    """s3prl's diarization config: LSTM 512 (``hidden``), Adam 1e-4, 30k steps, batches of 8 with
    4 accumulated (here one batch of 32), gradient clipping 1, no SpecAugment."""
    return TaskConfig(task="sd", hidden=512, lr=1e-4, max_steps=30_000, batch_size=32, specaug=False,
                      max_batch_seconds=640.0)


def mini_sd() -> TaskConfig:
    """CPU scale model: LSTM 128, learning rate 2e-3, 400 steps on cached, layer-normed features."""
    return TaskConfig(task="sd", hidden=128, lr=2e-3, max_steps=400, batch_size=16, specaug=False,
                      max_batch_seconds=200.0, val_every_epochs=4, cache_features=True, cache_mb=1024, normalize=True)


SPEC = register_task(TaskSpec(
    name="sd", title="SD", module=SDTask, metrics=("der",), axis_label="DER (%)", layouts=("kaldi_diarization",),
    presets={"superb_sd": superb_sd, "mini_sd": mini_sd}))

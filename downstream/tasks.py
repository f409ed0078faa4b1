"""SUPERB tasks as LightningModules: featurizer + head on a frozen upstream's hidden states."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import jiwer
import lightning as L
import torch
import torch.nn.functional as F

from . import text
from .features import FrozenUpstream
from .featurizer import Featurizer
from .heads import ASRHead, KSHead, spec_augment
from .speech_commands import CLASSES


@dataclass(frozen=True)
class TaskConfig:
    """Head sizes and schedule. Defaults are SUPERB's full ASR recipe; ``mini_asr()`` is the CPU scale model."""

    task: str = "asr"  # "asr" or "ks"
    # featurizer: None = weighted sum, else one hidden state (an index, -1 the last state, or
    # "last_transformer": the upstream's last transformer layer, SUPERB's DistilHuBERT protocol)
    layer: int | str | None = None
    normalize: bool = False  # layer-norm each state before the weighted sum; s3prl's default is off
    proj: int = 1024
    hidden: int = 1024
    lstm_layers: int = 2
    dropout: float = 0.2
    lr: float = 1e-4
    max_steps: int = 200_000
    batch_size: int = 16
    max_batch_seconds: float = 400.0
    grad_clip: float = 1.0
    specaug: bool = True
    seed: int = 0
    val_every_epochs: int = 1
    cache_features: bool = False
    cache_mb: float = 2048
    num_workers: int | None = None  # data-loading processes; None: 8 beside a GPU, 0 on CPU (see datamodule)

    def __post_init__(self):
        if self.task not in ("asr", "ks"):
            raise ValueError(f"task must be 'asr' or 'ks', got {self.task!r}")
        if self.max_steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("max_steps and batch_size must be >= 1 and lr > 0")

    def with_(self, **changes) -> "TaskConfig":
        return replace(self, **changes)


def superb_asr() -> TaskConfig:
    return TaskConfig()


def superb_ks() -> TaskConfig:
    return TaskConfig(task="ks", batch_size=32, specaug=False, max_batch_seconds=64.0)


def mini_asr() -> TaskConfig:
    """CPU scale model of SUPERB's ASR head: one BiLSTM layer of 192 (SUPERB: two of 1024), learning
    rate 3e-3 (SUPERB: 1e-4), about 250 steps, validation every 4 epochs, cached features. Chosen by
    measurement on the synthetic digits corpus: Whisper tiny.en features leave CTC's all-blank
    phase by step ~150 and reach a few % WER in about a minute on 2 CPU cores."""
    return TaskConfig(proj=192, hidden=192, lstm_layers=1, lr=3e-3, max_steps=250, batch_size=16,
                      max_batch_seconds=120.0, val_every_epochs=4, cache_features=True, cache_mb=1024, normalize=True)


class DownstreamTask(L.LightningModule):
    """Shared plumbing: frozen upstream -> featurizer -> head; per-step reseeding so a resumed
    run replays the same randomness as an uninterrupted one."""

    metric_name = "metric"
    metric_mode = "min"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__()
        self.config = config
        self.upstream = upstream
        self.featurizer = Featurizer(upstream.num_hidden_states, upstream.layer_index(config.layer), config.normalize)
        self.dev_curve: list[tuple[int, float]] = []
        self._outputs: list = []
        self.head_seconds = 0.0
        self.save_hyperparameters({"config": asdict(config)})

    def features(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [u.id for u in batch["utterances"]] if self.upstream.cache is not None else None
        states, lengths = self.upstream(batch["wavs"], batch["lengths"], keys)
        return self.featurizer(states), lengths

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Only tensors move; utterance records (frozen dataclasses) stay as they are."""
        return {**batch, "wavs": batch["wavs"].to(device), "lengths": batch["lengths"].to(device)}

    def on_fit_start(self):
        self.upstream.to(self.device)

    on_test_start = on_validation_start = on_fit_start

    def on_train_batch_start(self, batch, batch_idx):
        # Reseeded per step, not per epoch: Lightning creates a resumed run's first data iterator
        # (which draws from the global generator) at another moment than an uninterrupted run's,
        # so only a seed tied to the step makes dropout and SpecAugment replay exactly.
        torch.manual_seed(self.config.seed * 1_000_003 + self.global_step)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["dev_curve"] = self.dev_curve

    def on_load_checkpoint(self, checkpoint):
        self.dev_curve = [tuple(x) for x in checkpoint.get("dev_curve", [])]

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.config.lr)

    def on_validation_epoch_start(self):
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch, _idx):
        self._outputs.extend(self.predict(batch))

    test_step = validation_step

    def on_validation_epoch_end(self):
        metrics = self.score(self._outputs)
        for k, v in metrics.items():
            self.log(f"dev_{k}", v, prog_bar=k == self.metric_name)
        if not self.trainer.sanity_checking:
            self.dev_curve.append((int(self.global_step), float(metrics[self.metric_name])))

    def on_test_epoch_end(self):
        for k, v in self.score(self._outputs).items():
            self.log(f"test_{k}", v)

    def training_step(self, batch, _idx):
        x, lengths = self.features(batch)
        started = time.perf_counter()
        if self.config.specaug:
            x = spec_augment(x, lengths)
        loss = self.loss(x, lengths, batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=x.shape[0])
        self.head_seconds += time.perf_counter() - started
        return loss


class ASRTask(DownstreamTask):
    """CTC over SUPERB's characters; greedy decoding; corpus-level WER and CER (jiwer)."""

    metric_name, metric_mode = "wer", "min"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        self.head = ASRHead(upstream.hidden_size, len(text.VOCAB), config.proj, config.hidden, config.lstm_layers, config.dropout)

    def loss(self, x, lengths, batch):
        log_probs = self.head(x, lengths)
        targets = [torch.tensor(text.encode(u.transcript)) for u in batch["utterances"]]
        target_lengths = torch.tensor([len(t) for t in targets])
        return F.ctc_loss(log_probs.transpose(0, 1).float(), torch.cat(targets).to(x.device), lengths.cpu(), target_lengths,
                          blank=0, zero_infinity=True)

    def predict(self, batch) -> list[tuple[str, str]]:
        x, lengths = self.features(batch)
        best = self.head(x, lengths).argmax(-1).cpu()
        out = []
        for ids, n, utt in zip(best, lengths.cpu(), batch["utterances"]):
            ids = torch.unique_consecutive(ids[: int(n)]).tolist()
            out.append((utt.transcript, text.decode([i for i in ids if i != 0])))
        return out

    @staticmethod
    def score(pairs: list[tuple[str, str]]) -> dict[str, float]:
        refs = [r for r, _ in pairs]
        hyps = [h for _, h in pairs]
        return {"wer": 100 * jiwer.wer(refs, hyps), "cer": 100 * jiwer.cer(refs, hyps)}


class KSTask(DownstreamTask):
    """12-way keyword classification; accuracy (and its error rate as the monitored metric)."""

    metric_name, metric_mode = "acc", "max"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        self.head = KSHead(upstream.hidden_size, len(CLASSES), 256)
        self.class_index = {c: i for i, c in enumerate(CLASSES)}

    def loss(self, x, lengths, batch):
        labels = torch.tensor([self.class_index[u.label] for u in batch["utterances"]], device=x.device)
        return F.cross_entropy(self.head(x, lengths), labels)

    def predict(self, batch) -> list[tuple[str, str]]:
        x, lengths = self.features(batch)
        pred = self.head(x, lengths).argmax(-1).tolist()
        return [(u.label, CLASSES[p]) for u, p in zip(batch["utterances"], pred)]

    @staticmethod
    def score(pairs: list[tuple[str, str]]) -> dict[str, float]:
        return {"acc": 100 * sum(r == h for r, h in pairs) / max(len(pairs), 1)}


def make_task(upstream: FrozenUpstream, config: TaskConfig) -> DownstreamTask:
    return (ASRTask if config.task == "asr" else KSTask)(upstream, config)

"""What every SUPERB task shares: its config, the Lightning module plumbing (frozen upstream ->
featurizer -> head) and `TaskSpec`, the one record the trainer, the suites, the tables and the
plots read about a task. A task is a module of this package that calls `register_task`."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import lightning as L
import torch

from .. import metrics
from ..features import FrozenUpstream
from ..featurizer import Featurizer
from ..heads import spec_augment

TASKS: dict[str, "TaskSpec"] = {}
DEFAULT_TASK = "asr"  # what a config or a suite's [[runs]] table that names no task runs


@dataclass(frozen=True)
class TaskConfig:
    """Head sizes and schedule. Defaults are SUPERB's full ASR recipe; each task's presets
    (``TaskSpec.presets``) change what differs."""

    task: str = DEFAULT_TASK  # a registered task: see downstream.tasks.TASKS
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
    # PR: where each word's phones come from: "espeak" (espeak-ng's phonemizer, offline) or a
    # lexicon file "WORD PH1 PH2 ..." (SUPERB's librispeech-lexicon.txt)
    lexicon: str | None = None
    # labels a task derives from its training data (PR's phones, IC's slot values), filled in by
    # `TaskSpec.prepare` and kept in the checkpoint, so that a reused head decodes the same way
    labels: dict | None = field(default=None, hash=False, compare=False)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(sorted(TASKS))}, got {self.task!r}")
        if self.max_steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("max_steps and batch_size must be >= 1 and lr > 0")

    def with_(self, **changes) -> "TaskConfig":
        return replace(self, **changes)


@dataclass(frozen=True)
class TaskSpec:
    """A SUPERB task as the rest of the project sees it.

    ``module``: its LightningModule class (head, loss, decoding, scoring); ``metrics``: the test
    metrics tables report, the first being the headline (``module.metric_name`` is the one model
    selection monitors, ``module.metric_mode`` its direction); ``layouts``: data layouts it reads
    (see downstream.datamodule.LAYOUTS); ``presets``: named schedules a suite's ``preset`` picks,
    the first the default; ``balanced``: class-balanced training batches (SUPERB's KS sampler);
    ``prepare(config, train_corpus)``: fills ``config.labels`` from the training data;
    ``check(config)``: what would stop a run before it starts (a missing lexicon), or None, for
    dry runs; ``trains_head``: False for a task evaluated with the upstream's own output layer
    (end-to-end ASR), which is tested as it is (protocol ``retrain`` then trains nothing);
    ``window(upstream)``: the fixed input length in samples the task pads every utterance to
    before the upstream sees it (Whisper's 30 s for its own decoder), or None: calibration audio
    is padded the same way, so that a model is calibrated on the inputs it is evaluated on."""

    name: str
    title: str
    module: type
    metrics: tuple[str, ...]
    axis_label: str
    layouts: tuple[str, ...]
    presets: dict[str, Callable[[], TaskConfig]]
    balanced: bool = False
    prepare: Callable[[TaskConfig, object], TaskConfig] = lambda config, corpus: config
    check: Callable[[TaskConfig], str | None] = lambda config: None
    trains_head: bool = True
    window: Callable[[object], int | None] | None = None

    @property
    def mode(self) -> str:
        return self.module.metric_mode

    @property
    def headline(self) -> str:
        """The table column of the headline test metric, e.g. ``test_wer``."""
        return f"test_{self.metrics[0]}"


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in TASKS and TASKS[spec.name] is not spec:
        raise ValueError(f"task {spec.name!r} is registered twice")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def preset(name: str, task: str | None = None) -> TaskConfig:
    """The schedule a suite's ``preset = NAME`` names (of ``task``, when given)."""
    owners = [s for s in TASKS.values() if name in s.presets]
    if not owners or (task is not None and owners[0].name != task):
        known = [p for s in TASKS.values() if task in (None, s.name) for p in s.presets]
        raise ValueError(f"preset {name!r} unknown{f' for task {task!r}' if task else ''}; known: {', '.join(known)}")
    return owners[0].presets[name]()


class DownstreamTask(L.LightningModule):
    """Shared plumbing: frozen upstream -> featurizer -> head; per-step reseeding so a resumed
    run replays the same randomness as an uninterrupted one. Subclasses set ``self.head`` and
    give ``loss``, ``predict`` (reference, hypothesis pairs) and ``unit_scores`` (each metric as
    per-utterance (numerator, denominator) pairs; ``score`` sums them). After a test,
    ``test_units`` holds the units `test_scored` gives, which a results row keeps."""

    metric_name = "metric"
    metric_mode = "min"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__()
        self.config = config
        self.upstream = upstream
        self.featurizer = Featurizer(upstream.num_hidden_states, upstream.layer_index(config.layer), config.normalize)
        self.dev_curve: list[tuple[int, float]] = []
        self._outputs: list = []
        self._ids: list[str] = []
        self.test_units: dict | None = None
        self.head_seconds = 0.0
        self.save_hyperparameters({"config": asdict(config)})

    def data_labels(self, key: str, what: str) -> list:
        """``config.labels[key]``: labels the task's `prepare` read from the training data (a
        checkpoint carries them); without them the head has no outputs to build."""
        if not self.config.labels or key not in self.config.labels:
            raise ValueError(f"{self.config.task.upper()} needs its {what} (config.labels[{key!r}]): train it with "
                             "train_and_evaluate, which reads them from the training data")
        return self.config.labels[key]

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
        self._outputs, self._ids = [], []

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch, _idx):
        self._outputs.extend(self.predict(batch))
        self._ids.extend(u.id for u in batch["utterances"])

    test_step = validation_step

    def on_validation_epoch_end(self):
        metrics = self.score(self._outputs)
        for k, v in metrics.items():
            self.log(f"dev_{k}", v, prog_bar=k == self.metric_name)
        # the curves' x-axis: the step the row's dev_curve records (Lightning would log one fewer)
        self.log("step", float(self.global_step))
        if not self.trainer.sanity_checking:
            self.dev_curve.append((int(self.global_step), float(metrics[self.metric_name])))

    def test_scored(self) -> tuple[list[str], list[str], dict[str, metrics.Units]]:
        """The test units a row keeps: their ids, their references (the cluster the bootstrap
        draws together, and a group-wise metric's group: utterances that read the same text,
        the trials of one enrolment utterance, the detections of one query) and each metric's
        per-unit scores. Per utterance by default; a task whose unit is a trial overrides it."""
        return list(self._ids), [r for r, _ in self._outputs], self.unit_scores(self._outputs)

    def on_test_epoch_end(self):
        ids, refs, units = self.test_scored()
        self.test_units = {"ids": ids, "refs": refs, "scores": {k: [list(u) for u in v] for k, v in units.items()}}
        for k, v in metrics.totals(units, refs).items():
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

    def loss(self, x: torch.Tensor, lengths: torch.Tensor, batch) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, batch) -> list[tuple]:
        raise NotImplementedError

    @staticmethod
    def unit_scores(pairs: list[tuple]) -> dict[str, metrics.Units]:
        raise NotImplementedError

    @classmethod
    def score(cls, pairs: list[tuple]) -> dict[str, float]:
        """Each metric in percent, summed over utterances (corpus-level, as SUPERB scores)."""
        return metrics.totals(cls.unit_scores(pairs))


def make_task(upstream: FrozenUpstream, config: TaskConfig) -> DownstreamTask:
    return get_task(config.task).module(upstream, config)

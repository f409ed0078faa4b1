"""Training curves: the Lightning logger every training run (heads, QAT, distillation, recon's
blocks) writes to, under its own work folder, so that a long suite can be watched in TensorBoard
as s3prl users do. One way to pick it: a name from `LOGGERS` (``--logger`` on the CLI).

- ``tensorboard`` (the default): ``WORK/tb/`` event files (``tensorboard --logdir STORE``);
- ``csv``: ``WORK/csv/metrics.csv`` (Lightning's CSVLogger; no extra package);
- ``wandb``: offline unless ``WANDB_MODE`` says otherwise (``pip install .[wandb]``), ``WORK/wandb/``;
- ``mlflow``: a local file store ``WORK/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set
  (``pip install .[mlflow]``);
- ``none``: nothing is logged.

A resumed run logs into the same folder (TensorBoard merges the event files by step).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L

LOGGERS = ("tensorboard", "csv", "wandb", "mlflow", "none")
DEFAULT_LOGGER = "tensorboard"
# the module each logger imports, and how to install it (tensorboard is a dependency of the project itself)
_PACKAGES = {"tensorboard": ("tensorboard", "pip install -e ."), "wandb": ("wandb", "pip install -e '.[wandb]'"),
             "mlflow": ("mlflow", "pip install -e '.[mlflow]'")}


class LoggerUnavailable(ValueError):
    """The logger's package is not installed (its message names the extra to install)."""


def check_logger(kind: str) -> str:
    """``kind`` if it is a known logger whose package imports; a one-line error otherwise."""
    if kind not in LOGGERS:
        raise ValueError(f"logger {kind!r}: choose one of {', '.join(LOGGERS)}")
    if kind in _PACKAGES:
        module, install = _PACKAGES[kind]
        try:
            __import__(module)
        except ImportError as exc:
            raise LoggerUnavailable(f"--logger {kind} needs the {module!r} package: {install} "
                                    f"(or --logger csv, which needs nothing) ({exc})") from exc
    return kind


def make_logger(kind: str | None, work_dir: str | Path, name: str = "train"):
    """The Lightning logger of one training run writing under ``work_dir``; False for ``none``.
    ``name`` is the run's name in W&B and MLflow (TensorBoard and CSV use the folder)."""
    kind = check_logger(kind or DEFAULT_LOGGER)
    work_dir = Path(work_dir)
    if kind == "none":
        return False
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        # version="" puts the events straight in WORK/tb/: one folder per run, also after a resume
        return TensorBoardLogger(save_dir=str(work_dir), name="tb", version="", default_hp_metric=False)
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(work_dir), name="csv", version="")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        (work_dir / "wandb").mkdir(parents=True, exist_ok=True)
        return WandbLogger(name=name, save_dir=str(work_dir), offline=os.environ.get("WANDB_MODE", "offline") == "offline",
                           project=os.environ.get("WANDB_PROJECT", "lowbit-speech-bench"))
    from lightning.pytorch.loggers import MLFlowLogger

    if "MLFLOW_TRACKING_URI" not in os.environ:
        # mlflow-skinny has no database backend; its file store is what runs with nothing set up
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "lowbit-speech-bench"), run_name=name,
                        tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", (work_dir / "mlruns").resolve().as_uri()))


def curve_callbacks(logger) -> list[L.Callback]:
    """What a trainer with a logger adds: the learning rate and the training throughput."""
    if not logger:
        return []
    return [L.pytorch.callbacks.LearningRateMonitor(logging_interval="epoch"), Throughput()]


class Throughput(L.Callback):
    """Utterances (or crops) a second over each training epoch, logged as ``utterances_per_second``.
    Lightning's ThroughputMonitor needs a FLOP count and a batch-size function per module; this
    counts the batch's first dimension, which every training batch here has."""

    def __init__(self):
        self._started, self._count = 0.0, 0

    def on_train_epoch_start(self, trainer, module):
        self._started, self._count = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        wavs = batch["wavs"] if isinstance(batch, dict) else batch[0]
        self._count += int(wavs.shape[0])

    def on_train_epoch_end(self, trainer, module):
        seconds = time.perf_counter() - self._started
        if self._count and seconds > 0:
            module.log("utterances_per_second", self._count / seconds)
            module.log("step", float(trainer.global_step))  # the x-axis: steps done (Lightning logs one fewer)


def log_values(logger, values: dict[str, float], step: int) -> None:
    """Scalars from a loop Lightning does not run (recon's per-block optimisation)."""
    if logger:
        logger.log_metrics(values, step=step)


def log_block_curves(kind: str | None, work_dir: str | Path, reports: list[dict] | None) -> None:
    """Block reconstruction's per-block losses (``loss_curve`` of each block's report) as
    ``recon/<block>`` curves, and its error before and after per block, under ``work_dir``."""
    reports = [r for r in reports or [] if isinstance(r, dict) and "block" in r]
    logger = make_logger(kind, work_dir, name=Path(work_dir).name) if reports else False
    if not logger:
        return
    for i, report in enumerate(reports):
        for step, value in report.get("loss_curve") or []:
            log_values(logger, {f"recon/{report['block']}": value}, step)
        log_values(logger, {f"blocks/{k}": report[k] for k in ("gptq_error", "recon_error") if k in report}, i)
    logger.finalize("success")

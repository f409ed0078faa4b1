"""One call trains a SUPERB head on a frozen upstream and evaluates it; another reuses a trained head.

Protocols: ``retrain`` (SUPERB's: a head per upstream, ``train_and_evaluate``) and ``reuse``
(a head trained on the full-precision upstream, evaluated unchanged on a quantized one,
``evaluate``), which makes sweeps over bit widths cheap.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch

from upstream_quant.curves import curve_callbacks, make_logger
from upstream_quant.upstream import pick_device

from .datamodule import DataConfig, SpeechDataModule
from .features import FeatureCache, FrozenUpstream
from .tasks import TaskConfig, get_task, make_task

# Our tasks move only the tensors of a batch (its utterance records stay on the host), which is
# intended; Lightning warns whenever a module overrides this hook next to a data module.
warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")
# A run's work folder holds its checkpoints beside its resume counter, feature spill and curves,
# and a rerun resumes from it on purpose: Lightning's warning about a non-empty folder says nothing to act on.
warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")


def _trainer(task: TaskConfig, device: torch.device, devices: int, work_dir: Path | None, progress: bool,
             callbacks: list, logger=False, **kwargs) -> L.Trainer:
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    return L.Trainer(
        accelerator=accelerator, devices=devices, strategy="ddp" if devices > 1 else "auto",
        precision="bf16-mixed" if accelerator == "gpu" else "32-true", gradient_clip_val=task.grad_clip,
        logger=logger, enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        use_distributed_sampler=False, callbacks=callbacks, default_root_dir=work_dir, **kwargs,
    )


def _datamodule(task: TaskConfig, data: DataConfig) -> SpeechDataModule:
    spec = get_task(task.task)
    if data.layout not in spec.layouts:
        raise ValueError(f"task {task.task!r} reads data in layout(s) {', '.join(spec.layouts)}; got {data.layout!r}")
    return SpeechDataModule(data, task.batch_size, task.max_batch_seconds, task.seed, balanced=spec.balanced,
                            num_workers=task.num_workers)


def train_and_evaluate(upstream: torch.nn.Module, task: TaskConfig, data: DataConfig, work_dir: str | Path,
                       device: str | None = None, devices: int = 1, progress: bool = True,
                       callbacks: list | None = None, cache: FeatureCache | None = None,
                       logger: str | None = None) -> dict:
    """Train featurizer + head, keep the best checkpoint by the dev metric, test it; returns a result record.

    ``logger`` (`upstream_quant.curves.LOGGERS`, default TensorBoard) writes the training curves
    (train loss, learning rate, dev metrics, utterances a second) under ``work_dir``.

    Steps are rounded up to whole validation periods (``val_every_epochs`` epochs) so that
    every run ends with a validation. A run
    interrupted in any way resumes from ``work_dir/last.ckpt`` (saved every epoch) and, with
    per-epoch reseeding, reaches the same result as an uninterrupted one. With ``devices`` > 1
    (DDP) each step takes one batch per device, so divide ``max_steps`` by the device count to
    keep the number of utterances seen (see docs/paper-run.md).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    L.seed_everything(task.seed, workers=True, verbose=False)
    if not get_task(task.task).trains_head:
        return _test_as_it_is(upstream, task, data, dev, progress)
    if cache is None and task.cache_features:
        cache = FeatureCache(task.cache_mb, spill_dir=work_dir / "features")
    hits0, misses0 = (cache.hits, cache.misses) if cache else (0, 0)
    dm = _datamodule(task, data)
    dm.setup("fit")
    task = get_task(task.task).prepare(task, dm.corpora["train"])  # labels the task takes from its training data
    module = make_task(FrozenUpstream(upstream, cache), task)
    steps_per_epoch = len(dm.train_dataloader()) // max(devices, 1) or 1
    every = task.val_every_epochs
    epochs = math.ceil(math.ceil(task.max_steps / steps_per_epoch) / every) * every
    metric = f"dev_{module.metric_name}"
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=work_dir, filename="best", monitor=metric, mode=module.metric_mode,
                                               save_top_k=1, every_n_epochs=task.val_every_epochs)
    # last.ckpt after every epoch (not only validation epochs): an interrupted run loses at most one epoch
    resume = L.pytorch.callbacks.ModelCheckpoint(dirpath=work_dir, filename="last", save_top_k=1, every_n_epochs=1,
                                                 save_on_train_epoch_end=True, enable_version_counter=False)
    curves = make_logger(logger, work_dir, name=work_dir.name)
    trainer = _trainer(task, dev, devices, work_dir, progress, [ckpt, resume, *curve_callbacks(curves), *(callbacks or [])],
                       logger=curves, max_epochs=epochs, check_val_every_n_epoch=task.val_every_epochs,
                       log_every_n_steps=min(50, steps_per_epoch))
    last = work_dir / "last.ckpt"
    if last.is_file():
        check_resumable(last, module)
    resumes = _count_resume(work_dir) if last.is_file() and not _finished(work_dir) else _count_resume(work_dir, 0)
    started = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)
    train_seconds = time.time() - started
    (work_dir / "finished").touch()
    dev_curve = list(module.dev_curve)  # before test() loads the best checkpoint (and its shorter curve)
    best = ckpt.best_model_path or str(last)
    started = time.time()
    tested = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)[0]
    n_train = len(dm.corpora["train"])
    return {
        "task": task.task,
        "config": asdict(task),
        "metrics": {k: round(float(v), 3) for k, v in tested.items()} | {
            f"best_{metric}": round(float(ckpt.best_model_score), 3) if ckpt.best_model_score is not None else None},
        "dev_curve": dev_curve,
        "resumes": resumes,
        "steps": int(trainer.global_step),
        "epochs": epochs,
        "train_seconds": round(train_seconds, 2),
        "test_seconds": round(time.time() - started, 2),
        "train_utterances_per_second": round(n_train * epochs / max(train_seconds, 1e-9), 2),
        "upstream_seconds": round(module.upstream.seconds, 2),
        "head_seconds": round(module.head_seconds, 2),
        "feature_cache": {"hits": cache.hits - hits0, "misses": cache.misses - misses0} if cache else None,
        "featurizer_weights": module.featurizer.layer_weights(),
        "per_utterance": module.test_units,
        "checkpoint": best,
        "device": str(dev),
    }


def _test_as_it_is(upstream: torch.nn.Module, task: TaskConfig, data: DataConfig, dev: torch.device, progress: bool) -> dict:
    """A task with no head to train (its output layer is the upstream's): the test split only."""
    module = make_task(FrozenUpstream(upstream), task)
    dm = _datamodule(task, data)
    dm.setup("test")
    started = time.time()
    tested = _trainer(task, dev, 1, None, progress, []).test(module, datamodule=dm, verbose=False)[0]
    return {"task": task.task, "config": asdict(task), "metrics": {k: round(float(v), 3) for k, v in tested.items()},
            "dev_curve": [], "resumes": 0, "steps": 0, "epochs": 0, "train_seconds": 0.0,
            "test_seconds": round(time.time() - started, 2), "train_utterances_per_second": None,
            "upstream_seconds": round(module.upstream.seconds, 2), "head_seconds": 0.0, "feature_cache": None,
            "featurizer_weights": module.featurizer.layer_weights(), "per_utterance": module.test_units,
            "checkpoint": None, "device": str(dev)}


def check_resumable(checkpoint: Path, module: torch.nn.Module) -> None:
    """Refuse to resume from a checkpoint of another head (a preset whose sizes changed since the
    run was interrupted): Lightning would fail deep inside with a list of tensor shapes."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False).get("state_dict", {})
    mine = module.state_dict()
    differ = [k for k in mine if k in saved and tuple(saved[k].shape) != tuple(mine[k].shape)]
    missing = [k for k in mine if k not in saved]
    if differ or missing:
        what = f"{differ[0]} is {tuple(saved[differ[0]].shape)} there, {tuple(mine[differ[0]].shape)} now" if differ \
            else f"it lacks {missing[0]}"
        raise ValueError(f"{checkpoint} holds another head than this run builds ({what}); the schedule changed since "
                         f"it was written: delete {checkpoint.parent} to train afresh")


def _finished(work_dir: Path) -> bool:
    return (work_dir / "finished").is_file()


def _count_resume(work_dir: Path, add: int = 1) -> int:
    """How many times training in ``work_dir`` was resumed after an interruption (kept in the
    work dir, so it survives the interrupted processes)."""
    path = work_dir / "resumes"
    count = (int(path.read_text() or 0) if path.is_file() else 0) + add
    path.write_text(str(count))
    return count


def load_task(checkpoint: str | Path, upstream: torch.nn.Module, cache: FeatureCache | None = None):
    """A trained task module (featurizer + head) from its checkpoint, on a (possibly different) upstream."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    task = TaskConfig(**ckpt["hyper_parameters"]["config"])
    module = make_task(FrozenUpstream(upstream, cache), task)
    if module.featurizer.num_states != upstream.num_hidden_states:
        raise ValueError(f"{checkpoint}: head trained on an upstream with {module.featurizer.num_states} hidden states, "
                         f"this one has {upstream.num_hidden_states}")
    module.load_state_dict(ckpt["state_dict"])
    return module, task


def evaluate(upstream: torch.nn.Module, checkpoint: str | Path, data: DataConfig, split: str = "test",
             device: str | None = None, progress: bool = False, cache: FeatureCache | None = None) -> dict:
    """The ``reuse`` protocol: a trained head, unchanged, on ``upstream``'s features of ``split``.
    ``cache``: features of this upstream kept from an earlier call (the heads of several seeds
    evaluated on one model compute its features once; cached features are fp16, as in training)."""
    module, task = load_task(checkpoint, upstream, cache)
    dm = _datamodule(task, data)
    dm.setup("test" if split == "test" else "validate")
    trainer = _trainer(task, pick_device(device), 1, None, progress, [])
    started = time.time()
    if split == "test":
        out = trainer.test(module, datamodule=dm, verbose=False)[0]
    else:
        out = {k.replace("dev_", "test_"): v for k, v in trainer.validate(module, datamodule=dm, verbose=False)[0].items()}
    return {"task": task.task, "metrics": {k: round(float(v), 3) for k, v in out.items()},
            "featurizer_weights": module.featurizer.layer_weights(), "head_checkpoint": str(checkpoint),
            "per_utterance": module.test_units if split == "test" else None,
            "test_seconds": round(time.time() - started, 2)}


def sweep_lr(upstream: torch.nn.Module, task: TaskConfig, data: DataConfig, work_dir: str | Path,
             lrs: list[float], **kwargs) -> dict:
    """SUPERB tuned the learning rate per upstream: train one head per rate, keep the best by dev metric."""
    runs = {lr: train_and_evaluate(upstream, task.with_(lr=lr), data, Path(work_dir) / f"lr{lr:g}", **kwargs) for lr in lrs}
    key = next(k for k in next(iter(runs.values()))["metrics"] if k.startswith("best_dev_"))
    better = min if get_task(task.task).mode == "min" else max
    best_lr = better(runs, key=lambda lr: runs[lr]["metrics"][key])
    return runs[best_lr] | {"lr_sweep": {f"{lr:g}": runs[lr]["metrics"][key] for lr in lrs}, "lr": best_lr}

"""DistilHuBERT's recipe, label-free: a student predicts chosen teacher hidden states from audio.

Loss per predicted layer (Chang et al. 2022): L1 distance minus log-sigmoid of the cosine
similarity, averaged over valid frames. Used to build ``distil_whisper_tiny_en`` from Whisper
tiny.en; the same module trains any student whose hidden states match a teacher's.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from .upstream import Upstream


def distill_loss(pred: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor, cos_weight: float = 1.0) -> torch.Tensor:
    """Mean over valid frames of L1(pred, target) - cos_weight * log sigmoid(cos(pred, target)).
    A target may stop at the longest valid frame (`TeacherStudent.teacher_targets`)."""
    frames = min(pred.shape[1], target.shape[1])
    pred, target = pred[:, :frames], target[:, :frames]
    mask = torch.arange(pred.shape[1], device=pred.device)[None, :] < lengths[:, None]
    l1 = (pred - target).abs().mean(-1)
    cos = F.cosine_similarity(pred, target, dim=-1)
    per_frame = l1 - cos_weight * F.logsigmoid(cos)
    return (per_frame * mask).sum() / mask.sum().clamp(min=1)


def check_schedule(config) -> None:
    """Training settings shared by distillation and QAT: positive step and batch counts, finite
    positive learning rates and crop lengths (else a zero-step run, say, fails after writing)."""
    name = type(config).__name__
    for field in ("steps", "batch_size"):
        value = getattr(config, field)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{field} = {value!r}: expected a whole number >= 1")
    for field in ("lr", "scale_lr", "crop_seconds", "pack_seconds"):
        value = getattr(config, field, None)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}.{field} = {value!r}: expected a finite number > 0")


@dataclass(frozen=True)
class DistillConfig:
    """What the student learns. ``teacher_layers`` index the teacher's hidden states (0 is the front end)."""

    student_layers: int = 1
    teacher_layers: tuple[int, ...] = (2, 3, 4)
    lr: float = 2e-4
    steps: int = 2000
    batch_size: int = 8
    crop_seconds: float = 6.0
    cos_weight: float = 1.0
    seed: int = 0
    warmup_steps: int = 100

    def __post_init__(self):
        check_schedule(self)


class PredictionHeads(nn.Module):
    """One linear head per predicted teacher layer, on the student's last hidden state."""

    def __init__(self, dim: int, teacher_dim: int, n: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, teacher_dim) for _ in range(n))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [h(x) for h in self.heads]


class TeacherStudent(L.LightningModule):
    """The one teacher-to-student training module (distillation and QAT): a frozen teacher run
    under no_grad (held in a list, so it is neither a submodule nor saved), a trainable student;
    a subclass gives ``terms(wavs, lengths, targets) -> {name: (weight, loss)}``, whose weighted
    sum is the loss (each term logged under its name), and its optimizer."""

    TEACHER_MEMO_MB = 1024.0

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        self.student = student
        self.teacher = [teacher.eval()]
        self.crop_samples: int | None = None  # fit_unlabelled's crop: shorter items are whole utterances
        self.packed = False  # fit_unlabelled packs several utterances into each item (CropDataset.pack)
        # a fixed input window (samples) every crop is padded to with silence, as the model is deployed
        # (Whisper's own decoder reads 30 s); None: crops as they are
        self.window: int | None = None
        # every item is the same in every epoch (CropDataset.fixed): all of them recur, packed or cropped
        self.fixed_items = False
        # the teacher's hidden states the terms read (indices); None: all of them. The memo holds these only
        self.kept_states: tuple[int, ...] | None = None
        self.memo: dict[str, list[torch.Tensor]] = {}
        self.memo_bytes = 0
        self.memo_hits = self.memo_misses = 0

    def terms(self, wavs: torch.Tensor, lengths: torch.Tensor, targets: list[torch.Tensor],
              keys: list[str | None]) -> dict:
        """The loss terms, {name: (weight, value)}; ``keys`` are the items' `memo_keys`, for
        whatever else a subclass keeps per recurring item."""
        raise NotImplementedError

    def memo_keys(self, wavs: torch.Tensor, lengths: torch.Tensor, whole: list[bool] | None = None) -> list[str | None]:
        """Each item's key in the memo, the hash of its valid audio, where it recurs (whole
        utterances shorter than the crop; every item when fixed), else None. ``whole`` says which
        items are whole utterances when the lengths cannot (items padded to a fixed window: a
        whole utterance padded to 30 s recurs)."""
        import hashlib

        whole = self.recurring(lengths, wavs.shape[1]) if whole is None else whole
        return [hashlib.sha1(wavs[i, : int(lengths[i])].detach().cpu().numpy().tobytes()).hexdigest() if w else None
                for i, w in enumerate(whole)]

    def teacher_targets(self, wavs: torch.Tensor, lengths: torch.Tensor,
                        keys: list[str | None] | None = None) -> list[torch.Tensor]:
        """The teacher's hidden states (batch, frames, dim) for the batch (``kept_states`` of them), rounded to fp16.

        Memoized by crop content (in CPU memory, up to TEACHER_MEMO_MB; ``keys``: `memo_keys`, by
        default from the lengths): a frozen teacher gives the same states for
        the same audio, and where utterances are shorter than the crop (every small corpus) each
        epoch after the first sees the same whole utterances again; the teacher's forward was a
        quarter of a QAT step's time.
        Rounding is why a resumed run, whose memo starts empty, trains on the same targets as an
        uninterrupted one: hits and fresh states are both fp16."""
        teacher = self.teacher[0].to(wavs.device)

        def run(idx: list[int]) -> list[list[torch.Tensor]]:
            sub = torch.tensor(idx, device=wavs.device)
            with torch.no_grad():
                states, lens = teacher(wavs[sub, : int(lengths[sub].max())], lengths[sub])
            if self.kept_states is not None:
                states, lens = [states[k] for k in self.kept_states], [lens[k] for k in self.kept_states]
            return [[s[j, : int(n[j])].to("cpu", torch.float16) for s, n in zip(states, lens)] for j in range(len(idx))]

        # Only items that recur (whole utterances shorter than the crop; every item when fixed) are
        # memoized; each is run alone, so its states do not depend on the batch it first came in (a
        # resumed run meets it in another one). Random crops are run together, as the batch they are
        # in decides (the same on resume).
        keys = self.memo_keys(wavs, lengths) if keys is None else keys
        whole = [i for i, k in enumerate(keys) if k is not None]
        found: list = [self.memo.get(k) if k is not None else None for k in keys]
        self.memo_hits += sum(f is not None for f in found)
        cropped = [i for i, k in enumerate(keys) if k is None]
        for i, states in zip(cropped, run(cropped) if cropped else []):
            found[i] = states
        for i in [i for i in whole if found[i] is None]:
            self.memo_misses += 1
            found[i] = run([i])[0]
            size = sum(f.numel() * 2 for f in found[i])
            if self.memo_bytes + size <= self.TEACHER_MEMO_MB * 1e6:
                self.memo[keys[i]] = found[i]
                self.memo_bytes += size
        # padded to the longest valid length (the batch's padding frames are masked out of the loss)
        return [nn.utils.rnn.pad_sequence([f[k] for f in found], batch_first=True).to(wavs.device, torch.float32)
                for k in range(len(found[0]))]

    def recurring(self, lengths: torch.Tensor, width: int) -> list[bool]:
        """Which items of a batch ``width`` samples wide recur in later epochs: whole utterances
        (shorter than the crop); none when items are packed (they differ every epoch); all when
        every item is fixed (``fixed_items``)."""
        crop = self.crop_samples or width + 1
        return [self.fixed_items or (not self.packed and n < crop) for n in lengths.tolist()]

    def training_step(self, batch, _idx):
        wavs, lengths = batch
        whole = self.recurring(lengths, wavs.shape[1])  # judged before any padding to the window
        if self.window is not None:
            wavs = nn.functional.pad(wavs, (0, self.window - wavs.shape[1]))
            lengths = torch.full_like(lengths, self.window)
        keys = self.memo_keys(wavs, lengths, whole)
        targets = self.teacher_targets(wavs, lengths, keys)
        terms = self.terms(wavs, lengths, targets, keys)
        loss = torch.stack([w * part for w, part in terms.values()]).sum()
        self.log("loss", loss, prog_bar=True)
        for name, (_, part) in terms.items():
            self.log(name, part)
        return loss


class DistillModule(TeacherStudent):
    """DistilHuBERT: prediction heads on the student's last state regress chosen teacher layers
    (their losses summed)."""

    def __init__(self, student: Upstream, teacher: Upstream, config: DistillConfig):
        super().__init__(student, teacher)
        self.config = config
        self.heads = PredictionHeads(student.hidden_size, teacher.hidden_size, len(config.teacher_layers))

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        states, lens = self.student(wavs, lengths)
        return self.heads(states[-1]), lens[-1]

    def terms(self, wavs, lengths, targets, keys):
        preds, lens = self(wavs, lengths)
        return {f"loss_layer{i}": (1.0, distill_loss(p, targets[i][:, : p.shape[1]], lens, self.config.cos_weight))
                for p, i in zip(preds, self.config.teacher_layers)}

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.config.lr)
        warm = max(1, self.config.warmup_steps)
        total = max(self.config.steps, warm + 1)

        def schedule(step: int) -> float:  # linear warm-up, then linear decay to zero
            return min((step + 1) / warm, max(0.0, (total - step) / (total - warm)))

        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule), "interval": "step"}}


class CropDataset(torch.utils.data.Dataset):
    """Unlabelled audio, randomly cropped to at most ``crop`` samples (seeded per item and epoch).

    Items are waveforms or paths of audio files; a path is read at each access, only its crop
    (soundfile seeks), so memory stays bounded whatever the corpus size. Indexed by ``i`` or by
    ``(i, epoch)`` (what `EpochShuffle` yields: loader workers hold copies of the dataset, so the
    epoch travels with the index)."""

    GAP = 4000  # samples of silence between packed utterances (0.25 s: a pause between sentences)

    def __init__(self, items: Sequence[torch.Tensor | str | Path], crop: int, seed: int, pack: int | None = None,
                 fixed: bool = False):
        self.items, self.crop, self.seed, self.pack = list(items), crop, seed, pack
        self.fixed = fixed  # every epoch gives item i the same crop and pack (those of epoch 0)

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, item, rng: random.Random) -> torch.Tensor:
        if isinstance(item, torch.Tensor):
            if item.numel() <= self.crop:
                return item
            start = rng.randrange(item.numel() - self.crop)
            return item[start : start + self.crop]
        from .calibration import read_crop

        return read_crop(item, self.crop, rng)

    def __getitem__(self, index: int | tuple[int, int]) -> torch.Tensor:
        """Item ``i``'s crop; with ``pack`` (samples), followed by crops of other items drawn at
        random (per item and epoch; per item alone when ``fixed``), a short pause between them,
        while they fit in ``pack``: a window of continuous speech like the long-form audio a
        fixed-window model reads, where a short utterance padded to 30 s is mostly silence."""
        i, epoch = index if isinstance(index, tuple) else (index, 0)
        rng = random.Random(self.seed * 1_000_003 + (0 if self.fixed else epoch) * 7919 + i)
        out = self._read(self.items[i], rng)
        if self.pack is None or len(self.items) < 2:
            return out
        pieces, total, gap = [out], out.numel(), torch.zeros(self.GAP, dtype=out.dtype)
        for _ in range(64):  # a bound: a long utterance that does not fit ends the window
            nxt = self._read(self.items[rng.randrange(len(self.items))], rng)
            if total + self.GAP + nxt.numel() > self.pack:
                break
            pieces += [gap, nxt]
            total += self.GAP + nxt.numel()
        return torch.cat(pieces)


class EpochShuffle(torch.utils.data.Sampler):
    """A permutation per epoch drawn from (seed, epoch) alone, where the epoch and the position in
    it come from the optimizer steps taken (``step_source``) when an epoch's iterator is built: a
    resumed run (a new process, from an end-of-epoch or a mid-epoch checkpoint) sees the batches
    an uninterrupted one would. A DataLoader generator restarts from its seed, and Lightning's
    epoch counter is not yet restored when loader workers prefetch the first epoch's indices."""

    POOL_BATCHES = 8

    def __init__(self, n: int, seed: int, batch_size: int, drop_last: bool, step_source=None,
                 lengths: Sequence[int] | None = None):
        self.n, self.seed, self.batch_size, self.step_source = n, seed, batch_size, step_source
        self.batches = n // batch_size if drop_last else -(-n // batch_size)
        self.lengths = list(lengths) if lengths is not None else None
        if self.lengths is not None and len(self.lengths) != n:
            raise ValueError(f"lengths has {len(self.lengths)} entries for {n} items")

    def __len__(self) -> int:
        return self.n

    def order(self, epoch: int) -> list[int]:
        """The epoch's item order; consecutive runs of ``batch_size`` are its batches. With
        ``lengths`` (samples each item yields), each pool of POOL_BATCHES batches of the permutation
        is sorted by length before it is cut into batches, and the full batches are then shuffled:
        a batch pads to its longest item, and on utterances shorter than the crop random batches
        padded about a third of the audio (fairseq's and ESPnet's length-sorted batching)."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.n, generator=gen).tolist()
        if self.lengths is None:
            return order
        full, pool = (self.n // self.batch_size) * self.batch_size, self.POOL_BATCHES * self.batch_size
        batches = []
        for start in range(0, full, pool):
            ranked = sorted(order[start : min(start + pool, full)], key=lambda i: -self.lengths[i])
            batches += [ranked[j : j + self.batch_size] for j in range(0, len(ranked), self.batch_size)]
        shuffled = [batches[int(k)] for k in torch.randperm(len(batches), generator=gen)]
        return [i for batch in shuffled for i in batch] + order[full:]  # a partial batch stays last

    def __iter__(self):
        step = int(self.step_source()) if self.step_source is not None else 0
        epoch, done = divmod(step, max(1, self.batches))
        return iter([(int(i), epoch) for i in self.order(epoch)[done * self.batch_size:]])


class _StepSeed(L.Callback):
    """Reseed torch before every step from (seed, step): dropout and any other draw inside a step
    are the same in a resumed run as in an uninterrupted one."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer, module, batch, idx):
        torch.manual_seed(self.seed * 1_000_003 + trainer.global_step)


def cap_hours(files: Sequence[tuple[str, float]], max_hours: float | None, seed: int) -> list[str]:
    """Paths of (path, seconds) pairs, all of them or a seeded random subset of at most
    ``max_hours`` (the corpus order otherwise)."""
    if max_hours is None:
        return [p for p, _ in files]
    if max_hours <= 0:
        raise ValueError(f"max_hours must be > 0, got {max_hours}")
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    keep, total = set(), 0.0
    for i in order:
        if total + files[i][1] > max_hours * 3600 and keep:
            continue
        keep.add(i)
        total += files[i][1]
    return [files[i][0] for i in sorted(keep)]


def file_durations(files: Sequence[str]) -> list[tuple[str, float]]:
    """(path, seconds) of audio files, from their headers."""
    import soundfile as sf

    return [(f, sf.info(f).duration) for f in files]


def stream_files(folders: str, max_hours: float | None = None, seed: int = 0) -> list[str]:
    """The audio files under comma-separated ``folders`` (to stream from disk), capped at
    ``max_hours`` by `cap_hours` when given."""
    from .calibration import audio_files

    files = [path for folder in folders.split(",") for path in audio_files(folder)]
    return files if max_hours is None else cap_hours(file_durations(files), max_hours, seed)


def default_workers() -> int:
    """DataLoader workers for streamed audio: up to 8 beside a GPU, one on a CPU-only machine
    (there the cores are busy with the model)."""
    import os

    cores = os.cpu_count() or 1
    return min(8, cores - 1) if torch.cuda.is_available() else min(1, cores - 1)


def collate_wavs(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([w.numel() for w in items])
    return torch.nn.utils.rnn.pad_sequence(items, batch_first=True), lengths


@dataclass
class DistillResult:
    student: Upstream
    final_loss: float
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)


class _LossTrace(L.Callback):
    """Every step's loss; kept in checkpoints, so a resumed run reports the whole curve."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, idx):
        self.losses.append(float(outputs["loss"]))

    def state_dict(self) -> dict:
        return {"losses": list(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.losses = list(state.get("losses", []))


def _sample_counts(audio: Sequence[torch.Tensor | str | Path]) -> list[int]:
    """Samples per item: a waveform's length, or a file's frame count from its header."""
    import soundfile as sf

    from .calibration import CalibrationError

    counts = []
    for item in audio:
        if isinstance(item, torch.Tensor):
            counts.append(item.numel())
            continue
        try:
            counts.append(sf.info(str(item)).frames)
        except Exception as err:  # soundfile raises LibsndfileError/RuntimeError on corrupt files
            raise CalibrationError(f"cannot read audio file {item}: {err}") from err
    return counts


def fit_unlabelled(module: L.LightningModule, audio: Sequence[torch.Tensor | str | Path], steps: int, batch_size: int,
                   crop_seconds: float, seed: int, work_dir: str | Path, accelerator: str = "auto",
                   devices: int | str = "auto", progress: bool = True, callbacks: list | None = None,
                   num_workers: int | None = None, logger: str | None = None,
                   pack_seconds: float | None = None, fixed: bool = False) -> tuple[L.Trainer, list[float], float]:
    """Lightning fit on unlabelled random crops of ``audio`` (waveforms, or file paths streamed
    from disk by ``num_workers`` loader processes, default `default_workers`), checkpointing
    every 100 steps to ``work_dir/last.ckpt`` and resuming from it; returns the trainer, the loss
    trace and seconds. ``logger`` (`upstream_quant.curves.LOGGERS`) writes the loss, its terms,
    the learning rate and the throughput under ``work_dir``. ``pack_seconds``: each item is
    several whole utterances in a row, up to that long (`CropDataset`; ``crop_seconds`` unused).
    ``fixed``: every item is the same crop (and pack) in every epoch, so the module's teacher
    memo covers them all after the first epoch (`TeacherStudent.fixed_items`)."""
    import time

    from .curves import curve_callbacks, make_logger

    if not audio:
        raise ValueError("no unlabelled audio to train on")
    L.seed_everything(seed, workers=True, verbose=False)
    workers = default_workers() if num_workers is None else int(num_workers)
    drop_last = len(audio) > batch_size
    pack = None if pack_seconds is None else int(pack_seconds * 16000)
    # packed items are whole utterances in a row (an utterance longer than the pack is cropped to it)
    crop = int(crop_seconds * 16000) if pack is None else pack
    module.crop_samples = crop
    module.packed = pack is not None
    module.fixed_items = fixed
    counts = [min(crop, n) for n in _sample_counts(audio)]
    sampler = EpochShuffle(len(audio), seed, batch_size, drop_last, lengths=None if pack else counts)
    loader = torch.utils.data.DataLoader(
        CropDataset(audio, crop, seed, pack, fixed), batch_size=batch_size, sampler=sampler,
        collate_fn=collate_wavs, drop_last=drop_last, num_workers=workers,
        persistent_workers=workers > 0,
    )
    work_dir = Path(work_dir)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=work_dir, save_last=True, every_n_train_steps=100, save_top_k=0)
    trace = _LossTrace()
    gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    curves = make_logger(logger, work_dir, name=work_dir.name)
    trainer = L.Trainer(
        max_steps=steps, accelerator=accelerator, devices=devices,
        callbacks=[ckpt, trace, _StepSeed(seed), *curve_callbacks(curves), *(callbacks or [])],
        logger=curves, enable_progress_bar=progress, enable_model_summary=False, gradient_clip_val=10.0,
        precision="bf16-mixed" if gpu else "32-true", default_root_dir=work_dir, log_every_n_steps=10,
        strategy="ddp" if isinstance(devices, int) and devices > 1 else "auto",
    )
    sampler.step_source = lambda: trainer.global_step
    last = work_dir / "last.ckpt"
    started = time.time()
    with warnings.catch_warnings():
        # EpochShuffle resumes mid-epoch at the right batch (tested), which Lightning cannot see
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
        # the work folder is reused on purpose (resume; curves under tb/)
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        trainer.fit(module, loader, ckpt_path=str(last) if last.is_file() else None)
    return trainer, trace.losses, time.time() - started


def distill(student: Upstream, teacher: Upstream, audio: list, config: DistillConfig,
            work_dir: str | Path, accelerator: str = "auto", devices: int | str = "auto",
            progress: bool = True, logger: str | None = None) -> DistillResult:
    """Train ``student`` to predict ``teacher``'s layers on unlabelled ``audio`` (waveforms, or
    file paths streamed from disk); resumes from
    ``work_dir/last.ckpt`` when a previous run was interrupted."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = DistillModule(student.train(), teacher, config)
    trainer, losses, seconds = fit_unlabelled(module, audio, config.steps, config.batch_size, config.crop_seconds,
                                              config.seed, work_dir, accelerator, devices, progress, logger=logger)
    tail = losses[-50:] or [float("nan")]
    return DistillResult(module.student.eval(), sum(tail) / len(tail), int(trainer.global_step), seconds, losses)


def whisper_student(teacher, layers: int, name: str):
    """DistilHuBERT's initialisation: the teacher's front end and first ``layers`` layers."""
    from .upstreams.whisper import build_whisper

    cfg = teacher.architecture()["config"] | {"layers": layers}
    student = build_whisper(cfg, name)
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("layers.") or int(k.split(".")[1]) < layers}
    student.load_state_dict(state, strict=True)
    return student


def manifest_json(**fields) -> str:
    return json.dumps({k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in fields.items()}, indent=1)


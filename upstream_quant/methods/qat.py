"""Quantization-aware distillation: train a 1-bit or k-bit upstream to match its full-precision self.

Weights are quantized in every forward pass with a straight-through estimator; full-precision
latent weights are what the optimizer updates, and per-row scales are learned (LSQ-style for
uniform; the binary scale starts at mean |W|, the closed-form optimum). The loss is DistilHuBERT's
(L1 minus log-sigmoid cosine) on every hidden state against the frozen full-precision model, on
unlabelled audio. ``export`` turns the trained model into ordinary ``QuantizedLayer``s, so packed
files, accounting and suites treat QAT models like any other quantized upstream.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..qweight import QuantizedLayer, QuantizedWeight, grouped, prepare_input
from ..rotation import layer_seed, rotate, unrotate
from .binary import centred_params
from .uniform import minmax_params
from ..quantize import copy_module, target_layers
from . import MethodSpec, register


def _fp16(x: torch.Tensor) -> torch.Tensor:
    """x rounded to fp16 in value (as packed files store scales), gradient unchanged."""
    return x + (x.detach().half().float() - x.detach())


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def check_width(method: str, bits: int, symmetric: bool) -> None:
    """Binary is 1 bit (signs times a scale); uniform is 2..8 bits, or 1 bit with a zero point:
    the centred binary, two learned levels per row or group (binary.centred_params)."""
    if method == "binary" and bits == 1:
        return
    if method == "uniform" and (2 <= bits <= 8 or (bits == 1 and not symmetric)):
        return
    raise ValueError(f"QAT supports binary (1 bit), uniform (2..8 bits) or uniform at 1 bit with zero points "
                     f"(the centred binary), got {method} at {bits} bit{'s' * (bits != 1)}{'' if symmetric else ' with zero points'}")


def method_for(bits: int, symmetric: bool) -> str:
    """The QAT method a width and symmetry name: 1 bit is binary (signs times a scale), or with zero
    points the centred binary, uniform at 1 bit; wider is uniform."""
    return "binary" if bits == 1 and symmetric else "uniform"


class FakeQuantLinear(nn.Module):
    """An nn.Linear whose weight is quantized on the fly (straight-through) from a latent copy.

    Uniform: a learned scale per row or group of ``group_size`` inputs (LSQ), symmetric levels or,
    with ``symmetric=False``, asymmetric levels around a learned zero point; ``rotation``: the
    weight lives in a rotated input basis and the inputs are rotated at run time
    (upstream_quant.rotation). ``start`` (a QuantizedLayer of the same layer, e.g. GPTQ's) sets
    the latent weight, scales and zero points, so training starts from that model exactly.

    ``keep_codes``: the integer codes are fixed at the start's (or round-to-nearest's) and only
    the scales and zero points learn, with their exact gradient, w = (code - zero) * scale
    (EfficientQAT's end-to-end step, Chen et al. 2024). Why: from GPTQ's model the latent weights
    lie on the grid, where LSQ's straight-through scale gradient, round(x) - x, is zero for every
    code inside the range: only the clipped codes push the scales, which is not the loss's
    gradient (measured: the decoder loss rose 2.0 -> 19 in 40 steps)."""

    def __init__(self, linear: nn.Module, method: str, bits: int, group_size: int | None = None,
                 symmetric: bool = True, rotation: int | None = None, start: QuantizedLayer | None = None,
                 keep_codes: bool = False):
        super().__init__()
        check_width(method, bits, symmetric)
        self.method, self.bits, self.group_size, self.symmetric = method, bits, group_size, symmetric
        self.rotation, self.act = rotation, None
        if start is not None:  # the quantized layer's own weight, basis and parameters
            self.rotation, self.group_size = start.rotation, start.group_size
            w = start.weight.detach().clone()
        else:
            w = linear.weight.detach().clone()
            if rotation is not None:
                w = rotate(w, rotation)
        self.weight = nn.Parameter(w)  # the latent full-precision weight
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        g = grouped(w, self.group_size)
        if start is not None and method == "uniform":
            scale, zero = start.scale.detach().clone(), start.zero.detach().clone()
            if symmetric:  # codes c - 2^(b-1): the symmetric levels' zero is the middle code
                if not bool((zero == 2 ** (bits - 1)).all()):
                    raise ValueError("a symmetric QAT cannot start from a layer with zero points; use symmetric=False")
            elif start.bits != bits:
                raise ValueError(f"QAT at {bits} bits cannot start from a {start.bits}-bit layer")
        elif method == "binary":
            scale, zero = g.abs().mean(-1), None
        elif symmetric:
            scale, zero = g.abs().amax(-1) / (2 ** (bits - 1) - 0.5), None
        elif bits == 1:  # the centred binary: its two levels, not a range with zero at one end
            scale, zero = centred_params(g.detach().float())
        else:
            scale, zero = minmax_params(g, bits, symmetric=False)
        # the scale is learned as a log-ratio to its start: Adam's step is then a relative change,
        # the same for every group, where an absolute step (scales span 0.002..0.4 in Whisper tiny.en
        # at 2 bits) moved the smallest scales by tens of percent a step and the largest not at all
        self.register_buffer("scale_start", scale.clamp(min=1e-8))
        self.log_scale = nn.Parameter(torch.zeros_like(self.scale_start))
        self.zero = None if symmetric or method == "binary" else nn.Parameter(zero)
        self.register_buffer("codes", None)
        if keep_codes:
            self.weight.requires_grad_(False)
            if self.bias is not None:
                self.bias.requires_grad_(False)
            self.codes = self._levels().to(torch.int16)  # 8-bit asymmetric codes reach 255

    def _levels(self) -> torch.Tensor:
        """Each weight's integer level (grouped shape): the kept codes, or the latent weights
        rounded with the current scales and zero points (binary: -1/+1)."""
        if self.codes is not None:
            return self.codes.float()
        with torch.no_grad():
            g = grouped(self.weight, self.group_size)
            if self.method == "binary":
                return torch.where(g >= 0, 1.0, -1.0)
            s, (lo, hi) = self.scale.half().float()[..., None], self.levels
            z = 0.0 if self.zero is None else self.zero.half().float()[..., None]
            return torch.clamp(torch.round(g / s + z), lo, hi)

    @property
    def scale(self) -> torch.Tensor:
        return self.scale_start * torch.exp(self.log_scale)

    @property
    def levels(self) -> tuple[int, int]:
        if not self.symmetric:
            return 0, 2**self.bits - 1
        return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1

    def quantized_weight(self) -> torch.Tensor:
        if self.codes is not None:  # fixed codes: exact gradients to the scales and zero points
            q = self.codes.to(self.log_scale.dtype)
            if self.method == "binary":
                return (_fp16(2 * self.scale)[..., None] / 2 * q).reshape(self.weight.shape)
            z = 0.0 if self.zero is None else _fp16(self.zero)[..., None]
            return ((q - z) * _fp16(self.scale)[..., None]).reshape(self.weight.shape)
        g = grouped(self.weight, self.group_size)
        if self.method == "binary":
            alpha = _fp16(2 * self.scale)[..., None] / 2
            sign = torch.where(g >= 0, 1.0, -1.0).to(g.dtype)
            # value alpha * sign; gradient to the latent weight straight through (clipped at |w| > 1)
            return (alpha * (sign + (g - g.detach()) * (g.abs() <= 1))).reshape(self.weight.shape)
        s = _fp16(self.scale)[..., None]
        lo, hi = self.levels
        if self.zero is None:
            return (torch.clamp(_round_ste(g / s), lo, hi) * s).reshape(self.weight.shape)
        z = _fp16(self.zero)[..., None]
        return ((torch.clamp(_round_ste(g / s + z), lo, hi) - z) * s).reshape(self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.rotation is not None and x.numel() > self.weight.numel():
            # W_r (R x) = (W_r R) x: rotating the weight back costs its out x in entries once, the
            # inputs' rotation every frame's (half the quantized encoder's forward and backward in a
            # Whisper tiny.en training step on 2 cores: 30 s windows are 1,500 frames each)
            return F.linear(x, unrotate(self.quantized_weight(), self.rotation).to(x.dtype), bias)
        return F.linear(prepare_input(self, x), self.quantized_weight().to(x.dtype), bias)

    def to_quantized(self) -> QuantizedLayer:
        """The trained layer as stored codes and fp16 scales (what packed files hold)."""
        with torch.no_grad():
            q = self._levels()
            s = self.scale.half().float()
            if self.method == "binary":
                codes = (q > 0).to(torch.uint8)
                scale = 2 * s
                zero = torch.full_like(scale, 0.5)
                qw = QuantizedWeight(codes.reshape(self.weight.shape), scale, zero, 1, self.group_size, "qat-binary")
            else:
                lo, hi = self.levels
                if self.zero is None:
                    codes, zero = q - lo, torch.full_like(s, float(-lo))
                else:
                    zero, codes = self.zero.half().float(), q
                qw = QuantizedWeight(codes.to(torch.uint8).reshape(self.weight.shape), s, zero, self.bits, self.group_size,
                                     f"qat-uniform{self.bits}")
        plain = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None)
        if self.bias is not None:
            plain.bias.data.copy_(self.bias.detach())
        return QuantizedLayer(plain.to(self.weight.device), qw, rotation=self.rotation)


LOSSES = ("states", "decoder")
LEARN = ("all", "scales", "scales+float")
LEARN_TOKENS = {"scales": "scales", "scalesfloat": "scales+float"}  # suite token option -> QATConfig.learn
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class QATConfig:
    method: str = "binary"  # binary | uniform
    bits: int = 1
    targets: tuple[str, ...] = ("transformer",)
    lr: float = 1e-4
    # scales: relative change per step (learned as log-ratios); zero points: code units. None: 1e-3
    # beside the latent weights, 5e-3 with learn="scales" (exact gradients, nothing else moving)
    scale_lr: float | None = None
    steps: int = 500
    batch_size: int = 8
    crop_seconds: float = 4.0
    layer_weights: tuple[float, ...] | None = None  # per hidden state; None: all equal
    window: int | None = None  # pad every crop with silence to this many samples (the deployed input window)
    group_size: int | None = None  # uniform: inputs per learned scale; None: one per row
    symmetric: bool = True  # uniform: False learns a zero point per row (group) too
    rotate: bool = False  # weights in a rotated input basis (upstream_quant.rotation)
    cos_weight: float = 1.0
    # what the student matches: "states" (DistilHuBERT's loss on every hidden state) or "decoder"
    # (the model's own text decoder's next-token distributions, upstream_quant.decoder_loss)
    loss: str = "states"
    # several utterances in a row per training item, up to this many seconds (CropDataset.pack);
    # None: one utterance (crop) per item
    pack_seconds: float | None = None
    # what learns: "all" (latent weights by straight-through, scales, zero points and every other
    # parameter), "scales" (codes kept from the start, scales and zero points only; FakeQuantLinear)
    # or "scales+float" (codes kept; scales, zero points and every parameter stored in floating
    # point: biases, norms, layers left unquantized)
    learn: str = "all"
    # every learning rate as given for all steps ("constant"), or decayed from it to zero along half
    # a cosine over `steps` ("cosine", EfficientQAT's schedule: the last steps settle the scales
    # instead of leaving them where the last noisy batch pushed them; worse than constant at 85
    # steps through Whisper's decoder, where the loss is still falling: docs/quantization.md)
    lr_schedule: str = "constant"
    # every training item the same in every epoch (its crop and pack drawn from the seed and the item
    # alone, CropDataset.fixed), so the frozen teacher's work on it (encoder states; with the decoder
    # loss its greedy transcript) is done once, in the first epoch: about half a decoder-loss step on
    # Whisper tiny.en (docs/quantization.md). False: crops and packs drawn afresh each epoch
    fixed_items: bool = False
    seed: int = 0

    def __post_init__(self):
        from ..distill import check_schedule

        if self.scale_lr is None:
            object.__setattr__(self, "scale_lr", 5e-3 if self.learn != "all" else 1e-3)
        check_schedule(self)
        check_width(self.method, self.bits, self.symmetric)
        if self.loss not in LOSSES:
            raise ValueError(f"QATConfig.loss = {self.loss!r}: expected one of {', '.join(LOSSES)}")
        if self.pack_seconds is not None and self.window is not None and self.pack_seconds * 16000 > self.window:
            raise ValueError(f"QATConfig.pack_seconds = {self.pack_seconds}: longer than the input window "
                             f"({self.window / 16000:g} s) every item is padded to")
        if self.learn not in LEARN:
            raise ValueError(f"QATConfig.learn = {self.learn!r}: expected one of {', '.join(LEARN)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"QATConfig.lr_schedule = {self.lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}")


def prepare_qat(upstream: nn.Module, config: QATConfig, start: nn.Module | None = None) -> nn.Module:
    """A copy of ``upstream`` with every target Linear replaced by a FakeQuantLinear; ``start``
    (a quantized copy of ``upstream``, e.g. GPTQ's at the same width) sets each layer's start."""
    model = copy_module(upstream).requires_grad_(config.learn == "all")
    layers = {n: m for n, m in target_layers(model, config.targets).items() if isinstance(m, nn.Linear)}
    if not layers:
        raise ValueError(f"no Linear layers in groups {list(config.targets)} to train")
    begun = {} if start is None else {n: m for n, m in start.named_modules() if isinstance(m, QuantizedLayer)}
    missing = sorted(set(layers) - set(begun)) if start is not None else []
    if missing:
        raise ValueError(f"the starting model has no quantized layer {missing[:3]}")
    widths = {m.bits for m in begun.values()}
    if start is not None and len(widths) == 1 and widths != {config.bits}:
        raise ValueError(f"QAT at {config.bits} bits cannot start from a {widths.pop()}-bit model")
    for name, layer in layers.items():  # a mixed-precision start (several widths): each layer at its own
        bits = begun[name].bits if len(widths) > 1 else config.bits
        model.set_submodule(name, FakeQuantLinear(layer, config.method, bits, config.group_size, config.symmetric,
                                                  layer_seed(name) if config.rotate else None, begun.get(name),
                                                  keep_codes=config.learn != "all"))
    if config.learn == "scales+float":  # the kept codes' latent copies stay frozen; the rest learns
        for name, param in model.named_parameters():
            param.requires_grad_(not name.endswith(".weight") or not isinstance(
                model.get_submodule(name.rsplit(".", 1)[0]), FakeQuantLinear))
    return model


def export(model: nn.Module, config: QATConfig) -> nn.Module:
    """A copy with every FakeQuantLinear turned into a QuantizedLayer (codes + fp16 scales)."""
    out = copy_module(model).eval()
    for name, module in list(out.named_modules()):
        if isinstance(module, FakeQuantLinear):
            out.set_submodule(name, module.to_quantized())
    out.quantization = {"method": "QAT", "config": {"method": config.method, "bits": config.bits,
                                                    "targets": list(config.targets), "steps": config.steps,
                                                    "group_size": config.group_size, "symmetric": config.symmetric,
                                                    "rotate": config.rotate, "window": config.window,
                                                    "loss": config.loss, "lr_schedule": config.lr_schedule,
                                                    "fixed_items": config.fixed_items}}
    return out


def _lightning_module():
    from ..decoder_loss import decoder_kl, forcing_inputs, text_decoder
    from ..distill import TeacherStudent, distill_loss

    class QATLightning(TeacherStudent):
        """The fake-quantized student matches the full-precision teacher on every hidden state
        (``layer_weights`` weight them), learning its scales at their own rate."""

        def __init__(self, student: nn.Module, teacher: nn.Module, config: QATConfig):
            super().__init__(student, teacher)
            self.config = config
            # the frozen text decoder (a list: not a submodule, so not trained or saved)
            self.decoder = [text_decoder(teacher)] if config.loss == "decoder" else []
            if self.decoder:
                self.kept_states = (-1,)  # the decoder reads the last state alone: the memo keeps that one
            # the teacher's greedy transcripts of items that recur, by memo key: kept in checkpoints, so a
            # resumed run forces the tokens an uninterrupted one did
            self.transcripts: dict[str, list[int]] = {}

        def pseudo_labels(self, encoded: torch.Tensor, keys: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
            """The teacher's greedy transcripts of the batch as forcing inputs; an item that recurs
            (fixed packs; ``keys``: its `memo_keys`) is transcribed once. Why: greedy decoding was a third
            of a step (2.8 of 8.7 s: Whisper tiny.en, 4 windows of 30 s), its vocabulary projection read
            once per token."""
            ids = [self.transcripts.get(k) if k is not None else None for k in keys]
            todo = [i for i, x in enumerate(ids) if x is None]
            if todo:
                fresh = self.decoder[0].to(encoded.device).greedy(encoded[todo])
                for i, row in zip(todo, fresh):
                    ids[i] = row
                    if keys[i] is not None:
                        self.transcripts[keys[i]] = row
            return forcing_inputs(ids, encoded.device)

        def on_save_checkpoint(self, checkpoint: dict) -> None:
            checkpoint["teacher_transcripts"] = dict(self.transcripts)

        def on_load_checkpoint(self, checkpoint: dict) -> None:
            self.transcripts = dict(checkpoint.get("teacher_transcripts", {}))

        def terms(self, wavs, lengths, targets, keys):
            preds, lens = self.student(wavs, lengths)
            if self.decoder:
                tokens, mask = self.pseudo_labels(targets[-1], keys)
                return {"loss_decoder": (1.0, decoder_kl(self.decoder[0], preds[-1], targets[-1], tokens, mask))}
            weights = self.config.layer_weights or (1.0,) * len(preds)
            if len(weights) != len(preds):
                raise ValueError(f"layer_weights has {len(weights)} entries; the upstream has {len(preds)} hidden states")
            total = sum(weights)
            return {f"loss_state{i}": (w / total, distill_loss(p, t, lens[i], self.config.cos_weight))
                    for i, (w, p, t) in enumerate(zip(weights, preds, targets)) if w}

        def configure_optimizers(self):
            scales = [p for n, p in self.student.named_parameters() if n.endswith((".log_scale", ".zero"))]
            others = [p for n, p in self.student.named_parameters() if not n.endswith((".log_scale", ".zero")) and p.requires_grad]
            groups = [{"params": others, "lr": self.config.lr}, {"params": scales, "lr": self.config.scale_lr}]
            opt = torch.optim.Adam([g for g in groups if g["params"]])
            if self.config.lr_schedule == "constant":
                return opt
            steps = self.config.steps
            decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": decay, "interval": "step"}}

    return QATLightning


def train_qat(upstream: nn.Module, audio: list, config: QATConfig, work_dir,
              accelerator: str = "auto", devices: int | str = "auto", progress: bool = True,
              callbacks: list | None = None, num_workers: int | None = None,
              logger: str | None = None, start: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """QAT of ``upstream`` on unlabelled ``audio`` (waveforms, or file paths streamed from disk),
    from ``start`` if given (see `prepare_qat`); returns the exported quantized model and a
    summary. Resumes from ``work_dir/last.ckpt``."""
    import dataclasses

    from ..decoder_loss import text_decoder
    from ..distill import fit_unlabelled

    if config.loss == "decoder":
        text_decoder(upstream)  # a model without a decoder is refused before any work
        if config.window is None:  # the decoder reads fixed windows (Whisper: 30 s), so the student learns on them
            config = dataclasses.replace(config, window=upstream.max_samples)
    torch.manual_seed(config.seed)
    student = prepare_qat(upstream, config, start).train()
    module = _lightning_module()(student, upstream, config)
    module.window = config.window
    trainer, losses, seconds = fit_unlabelled(module, audio, config.steps, config.batch_size, config.crop_seconds,
                                              config.seed, work_dir, accelerator, devices, progress, callbacks, num_workers,
                                              logger=logger, pack_seconds=config.pack_seconds, fixed=config.fixed_items)
    model = export(module.student, config)
    tail = losses[-20:] or [float("nan")]
    return model, {"steps": int(trainer.global_step), "seconds": round(seconds, 1), "first_loss": losses[0] if losses else None,
                   "final_loss": sum(tail) / len(tail), "loss_curve": losses[:: max(1, len(losses) // 50)]}


# ---------------------------------------------------------------- suite token

GRAMMAR = ("qat:BITS[:sSTEPS][:bN][:gN][:asym][:rot][:gptq|:reconN|:mixedXb][:dec][:scales|:scalesfloat][:pN][:cos][:fixed]"
           "[:calib=GROUP]")
DEFAULT_STEPS = 300  # a suite token's, without sN
OPTION_FIELDS = ("steps", "batch_size", "lr", "scale_lr", "crop_seconds", "pack_seconds", "max_hours", "num_workers")


def _parse(token: str, bits: int, options: list[str]) -> dict:
    """``GRAMMAR`` (1 bit: binary weights, with ``asym`` the centred binary, two learned levels per
    group; else uniform); 300 steps of 8 items unless given (``bN``: N
    items a step); ``gptq``: start from GPTQ's model at the same width, groups, zero points and
    rotation, calibrated on the run's calibration audio; ``reconN``: from block reconstruction's
    model (GPTQ, then N steps a block; `upstream_quant.methods.recon`) at the same width, groups,
    zero points and rotation, on the same audio; ``mixedXb``: from mixed precision's model
    at an average of X bits (GPTQ at each layer's width, BITS the narrowest;
    `upstream_quant.methods.mixed`), each layer trained at its width; ``dec``: distil through the
    model's own text decoder (upstream_quant.decoder_loss) instead of its hidden states; ``scales``:
    keep the start's codes and learn only the scales and zero points (FakeQuantLinear);
    ``scalesfloat``: the same and every floating-point parameter (biases, norms); ``pN``:
    train on several utterances in a row, up to N seconds an item (CropDataset.pack); ``cos``: the
    learning rates decay to zero along a cosine (QATConfig.lr_schedule); ``fixed``: each item the
    same in every epoch, the teacher's work on it done once (QATConfig.fixed_items); ``calib=GROUP``:
    the start's calibration and the training audio from a group as mixed precision's token reads
    it (F, M, a speaker id, or another data table of the suite: more or other unlabelled audio
    than the run's data holds), not from all of the run's model audio."""
    out = {"qat_steps": DEFAULT_STEPS}
    for opt in options:
        if opt[:1] == "s" and opt[1:].isdigit():
            out["qat_steps"] = int(opt[1:])
        elif opt[:1] == "g" and opt[1:].isdigit():
            out["group_size"] = int(opt[1:])
        elif opt == "asym":
            out["symmetric"] = False
        elif opt == "rot":
            out["rotate"] = True
        elif opt == "gptq":
            out["init"] = "gptq"
        elif re.fullmatch(r"recon\d+", opt):
            out["init"], out["steps"] = "recon", int(opt[5:])  # recon's steps a block (QuantSpec.steps)
        elif re.fullmatch(r"mixed\d+(\.\d+)?b", opt):
            out["init"], out["budget_bits"] = "mixed", float(opt[5:-1])
            if not bits < out["budget_bits"] < 8:
                raise ValueError(f"quantization {token!r}: a mixed start averages more than {bits} and less than 8 bits")
        elif opt == "dec":
            out["loss"] = "decoder"
        elif opt in LEARN_TOKENS:
            out["learn"] = LEARN_TOKENS[opt]
        elif opt[:1] == "p" and opt[1:].isdigit() and int(opt[1:]) > 0:
            out["pack_seconds"] = float(opt[1:])
        elif opt[:1] == "b" and opt[1:].isdigit() and int(opt[1:]) > 0:
            out["batch_size"] = int(opt[1:])
        elif opt == "cos":
            out["lr_schedule"] = "cosine"
        elif opt == "fixed":
            out["fixed_items"] = True
        elif opt.startswith("calib=") and opt != "calib=":
            out["calib"] = opt.removeprefix("calib=")
        else:
            raise ValueError(f"quantization {token!r}: unknown option {opt!r} (sSTEPS, bN, gN, asym, rot, gptq, reconN, mixedXb, dec, "
                             "scales, scalesfloat, pN, cos, fixed, calib=GROUP)")
    if bits == 1 and out.get("init") in ("mixed", "recon"):
        raise ValueError(f"quantization {token!r}: a {out['init']} start needs a width of 2 bits or more")
    if bits == 1 and out.get("init") == "gptq" and "symmetric" not in out:
        raise ValueError(f"quantization {token!r}: 1-bit GPTQ is a centred binary: add asym (qat:1:...:asym:gptq)")
    return out


def _label(spec) -> str:
    return f"qat{spec.bits}" + "".join(f"-{x}" for x in (
        # the steps, unless the default: runs that differ only in steps are different rows (rows stored
        # before the steps were named keep their names)
        f"s{spec.qat_steps}" if spec.qat_steps not in (None, DEFAULT_STEPS) else None,
        f"g{spec.group_size}" if spec.group_size else None, "asym" if spec.symmetric is False else None,
        "rot" if spec.rotate else None, "from-gptq" if spec.init == "gptq" else None,
        f"from-recon{spec.steps}" if spec.init == "recon" else None,
        f"from-mixed{spec.budget_bits:g}b" if spec.init == "mixed" else None,
        "dec" if spec.loss == "decoder" else None, next((t for t, v in LEARN_TOKENS.items() if v == spec.learn), None),
        f"p{spec.pack_seconds:g}" if spec.pack_seconds else None, "cos" if spec.lr_schedule == "cosine" else None,
        "fixed" if spec.fixed_items else None, f"calib-{spec.calib}" if spec.calib != "all" else None) if x)


def _build(base: nn.Module, spec, context) -> tuple[nn.Module, dict]:
    """Distil the quantized student from ``base`` on the data's training audio (or the token's
    ``calib=`` group's), streamed from disk; ``--set qat.FIELD=VALUE`` (``context.options``)
    overrides the schedule."""
    from ..quantize import quantize
    from ..upstream import pick_device
    from .gptq import GPTQConfig

    opts = dict(context.options)
    max_hours = opts.pop("max_hours", None)
    workers = opts.pop("num_workers", None)
    opts.setdefault("steps", spec.qat_steps)
    for name in ("batch_size", "pack_seconds"):  # given in the token (bN, pN); --set overrides
        if getattr(spec, name) is not None:
            opts.setdefault(name, getattr(spec, name))
    shape = {"group_size": spec.group_size, "symmetric": spec.symmetric is not False, "rotate": bool(spec.rotate)}
    loss = spec.loss or "states"
    if loss == "decoder":
        from ..decoder_loss import text_decoder

        text_decoder(base)  # before GPTQ's start or any training
    config = QATConfig(method=method_for(spec.bits, shape["symmetric"]), bits=spec.bits, seed=context.seed, window=context.window,
                       loss=loss, learn=spec.learn or "all", lr_schedule=spec.lr_schedule or "constant",
                       fixed_items=bool(spec.fixed_items),
                       **shape, **{k: (int(v) if k in ("steps", "batch_size") else float(v)) for k, v in opts.items()})
    import time

    start, info, began = None, {}, time.time()
    if spec.init in ("gptq", "recon"):
        from .recon import ReconConfig

        start_config = (GPTQConfig(bits=spec.bits, targets=config.targets, **shape) if spec.init == "gptq" else
                        ReconConfig(bits=spec.bits, steps=spec.steps, seed=context.seed, targets=config.targets, **shape))
        start = quantize(base, start_config, calibration=context.calibration(spec.calib), progress=False)
        info[f"{spec.init}_seconds"] = round(time.time() - began, 2)
    elif spec.init == "mixed":
        from .mixed import mixed_precision

        start, report = mixed_precision(base, context.calibration(spec.calib), None, budget_bits=spec.budget_bits, rounding="gptq",
                                        seed=context.seed, layer_coverage="transformer", **shape)
        info |= {"mixed_seconds": round(time.time() - began, 2), "mixed": report}
    device = pick_device(context.device)
    model, summary = train_qat(base, context.unlabelled_files(max_hours, spec.calib), config, context.work_dir,
                               accelerator="gpu" if device.type == "cuda" else "cpu", devices=context.devices,
                               progress=context.progress, num_workers=workers, logger=context.logger,
                               callbacks=list(context.callbacks), start=start)
    return model, {"qat": summary | info}


register(MethodSpec(
    name="qat", summary="quantization-aware distillation from the full-precision upstream on unlabelled audio "
    "(1 bit: binary, with asym the centred binary; else uniform)",
    grammar=GRAMMAR, parse=_parse, label=_label, build=_build, trains=True,
    calibrates=lambda spec: spec.init in ("gptq", "recon", "mixed"),
    option_fields=OPTION_FIELDS, order=1))

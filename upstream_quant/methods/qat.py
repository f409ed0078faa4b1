"""Quantization-aware distillation: train a 1-bit or k-bit upstream to match its full-precision self.

Weights are quantized in every forward pass with a straight-through estimator; full-precision
latent weights are what the optimizer updates, and per-row scales are learned (LSQ-style for
uniform; the binary scale starts at mean |W|, the closed-form optimum). The loss is DistilHuBERT's
(L1 minus log-sigmoid cosine) on every hidden state against the frozen full-precision model, on
unlabelled audio. ``export`` turns the trained model into ordinary ``QuantizedLayer``s, so packed
files, accounting and suites treat QAT models like any other quantized upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..qweight import QuantizedLayer, QuantizedWeight
from ..quantize import copy_module, target_layers
from . import MethodSpec, register


def _fp16(x: torch.Tensor) -> torch.Tensor:
    """x rounded to fp16 in value (as packed files store scales), gradient unchanged."""
    return x + (x.detach().half().float() - x.detach())


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class FakeQuantLinear(nn.Module):
    """An nn.Linear whose weight is quantized on the fly (straight-through) from a latent copy."""

    def __init__(self, linear: nn.Linear, method: str, bits: int):
        super().__init__()
        if method not in ("binary", "uniform") or (method == "binary") != (bits == 1) or not 1 <= bits <= 8:
            raise ValueError(f"QAT supports binary (1 bit) or uniform (2..8 bits), got {method} {bits}")
        self.method, self.bits = method, bits
        w = linear.weight.detach().clone()
        self.weight = nn.Parameter(w)  # the latent full-precision weight
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        if method == "binary":
            init = w.abs().mean(1)
        else:
            init = w.abs().amax(1) / (2 ** (bits - 1) - 0.5)
        self.scale = nn.Parameter(init.clamp(min=1e-8))

    @property
    def levels(self) -> tuple[int, int]:
        return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1

    def quantized_weight(self) -> torch.Tensor:
        if self.method == "binary":
            alpha = _fp16(2 * self.scale)[:, None] / 2
            sign = torch.where(self.weight >= 0, 1.0, -1.0).to(self.weight.dtype)
            # value alpha * sign; gradient to the latent weight straight through (clipped at |w| > 1)
            return alpha * (sign + (self.weight - self.weight.detach()) * (self.weight.abs() <= 1))
        s = _fp16(self.scale)[:, None]
        lo, hi = self.levels
        return torch.clamp(_round_ste(self.weight / s), lo, hi) * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def to_quantized(self) -> QuantizedLayer:
        """The trained layer as stored codes and fp16 scales (what packed files hold)."""
        with torch.no_grad():
            if self.method == "binary":
                codes = (self.weight >= 0).to(torch.uint8)
                scale = (2 * self.scale)[:, None].float()
                zero = torch.full_like(scale, 0.5)
                qw = QuantizedWeight(codes, scale, zero, 1, None, "qat-binary")
            else:
                s = self.scale.half().float()[:, None]
                lo, hi = self.levels
                q = torch.clamp(torch.round(self.weight / s), lo, hi)
                codes = (q - lo).to(torch.uint8)
                qw = QuantizedWeight(codes, s, torch.full_like(s, float(-lo)), self.bits, None, f"qat-uniform{self.bits}")
        plain = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None)
        if self.bias is not None:
            plain.bias.data.copy_(self.bias.detach())
        return QuantizedLayer(plain.to(self.weight.device), qw)


@dataclass(frozen=True)
class QATConfig:
    method: str = "binary"  # binary | uniform
    bits: int = 1
    targets: tuple[str, ...] = ("transformer",)
    lr: float = 1e-4
    scale_lr: float = 1e-3
    steps: int = 500
    batch_size: int = 8
    crop_seconds: float = 4.0
    layer_weights: tuple[float, ...] | None = None  # per hidden state; None: all equal
    cos_weight: float = 1.0
    seed: int = 0

    def __post_init__(self):
        from ..distill import check_schedule

        check_schedule(self)


def prepare_qat(upstream: nn.Module, config: QATConfig) -> nn.Module:
    """A copy of ``upstream`` with every target Linear replaced by a FakeQuantLinear."""
    model = copy_module(upstream).requires_grad_(True)
    layers = {n: m for n, m in target_layers(model, config.targets).items() if isinstance(m, nn.Linear)}
    if not layers:
        raise ValueError(f"no Linear layers in groups {list(config.targets)} to train")
    for name, layer in layers.items():
        model.set_submodule(name, FakeQuantLinear(layer, config.method, config.bits))
    return model


def export(model: nn.Module, config: QATConfig) -> nn.Module:
    """A copy with every FakeQuantLinear turned into a QuantizedLayer (codes + fp16 scales)."""
    out = copy_module(model).eval()
    for name, module in list(out.named_modules()):
        if isinstance(module, FakeQuantLinear):
            out.set_submodule(name, module.to_quantized())
    out.quantization = {"method": "QAT", "config": {"method": config.method, "bits": config.bits,
                                                    "targets": list(config.targets), "steps": config.steps}}
    return out


def _lightning_module():
    from ..distill import TeacherStudent, distill_loss

    class QATLightning(TeacherStudent):
        """The fake-quantized student matches the full-precision teacher on every hidden state
        (``layer_weights`` weight them), learning its scales at their own rate."""

        def __init__(self, student: nn.Module, teacher: nn.Module, config: QATConfig):
            super().__init__(student, teacher)
            self.config = config

        def terms(self, wavs, lengths, targets):
            preds, lens = self.student(wavs, lengths)
            weights = self.config.layer_weights or (1.0,) * len(preds)
            if len(weights) != len(preds):
                raise ValueError(f"layer_weights has {len(weights)} entries; the upstream has {len(preds)} hidden states")
            total = sum(weights)
            return {f"loss_state{i}": (w / total, distill_loss(p, t, lens[i], self.config.cos_weight))
                    for i, (w, p, t) in enumerate(zip(weights, preds, targets)) if w}

        def configure_optimizers(self):
            scales = [p for n, p in self.student.named_parameters() if n.endswith(".scale")]
            others = [p for n, p in self.student.named_parameters() if not n.endswith(".scale") and p.requires_grad]
            return torch.optim.Adam([{"params": others, "lr": self.config.lr},
                                     {"params": scales, "lr": self.config.scale_lr}])

    return QATLightning


def train_qat(upstream: nn.Module, audio: list, config: QATConfig, work_dir,
              accelerator: str = "auto", devices: int | str = "auto", progress: bool = True,
              callbacks: list | None = None, num_workers: int | None = None,
              logger: str | None = None) -> tuple[nn.Module, dict]:
    """QAT of ``upstream`` on unlabelled ``audio`` (waveforms, or file paths streamed from disk);
    returns the exported quantized model and a summary. Resumes from ``work_dir/last.ckpt``."""
    from ..distill import fit_unlabelled

    torch.manual_seed(config.seed)
    student = prepare_qat(upstream, config).train()
    module = _lightning_module()(student, upstream, config)
    trainer, losses, seconds = fit_unlabelled(module, audio, config.steps, config.batch_size, config.crop_seconds,
                                              config.seed, work_dir, accelerator, devices, progress, callbacks, num_workers,
                                              logger=logger)
    model = export(module.student, config)
    tail = losses[-20:] or [float("nan")]
    return model, {"steps": int(trainer.global_step), "seconds": round(seconds, 1), "first_loss": losses[0] if losses else None,
                   "final_loss": sum(tail) / len(tail), "loss_curve": losses[:: max(1, len(losses) // 50)]}


# ---------------------------------------------------------------- suite token

OPTION_FIELDS = ("steps", "batch_size", "lr", "scale_lr", "crop_seconds", "max_hours", "num_workers")


def _parse(token: str, bits: int, options: list[str]) -> dict:
    """``qat:BITS[:sSTEPS]`` (1 bit: binary weights, else uniform); 300 steps unless given."""
    out = {"qat_steps": 300}
    for opt in options:
        if opt[:1] == "s" and opt[1:].isdigit():
            out["qat_steps"] = int(opt[1:])
        else:
            raise ValueError(f"quantization {token!r}: unknown option {opt!r} (sSTEPS)")
    return out


def _build(base: nn.Module, spec, context) -> tuple[nn.Module, dict]:
    """Distil the quantized student from ``base`` on the data's training audio, streamed from
    disk; ``--set qat.FIELD=VALUE`` (``context.options``) overrides the schedule."""
    from ..upstream import pick_device

    opts = dict(context.options)
    max_hours = opts.pop("max_hours", None)
    workers = opts.pop("num_workers", None)
    opts.setdefault("steps", spec.qat_steps)
    config = QATConfig(method="binary" if spec.bits == 1 else "uniform", bits=spec.bits, seed=context.seed,
                       **{k: (int(v) if k in ("steps", "batch_size") else float(v)) for k, v in opts.items()})
    device = pick_device(context.device)
    model, summary = train_qat(base, context.unlabelled_files(max_hours), config, context.work_dir,
                               accelerator="gpu" if device.type == "cuda" else "cpu", devices=context.devices,
                               progress=context.progress, num_workers=workers, logger=context.logger,
                               callbacks=list(context.callbacks))
    return model, {"qat": summary}


register(MethodSpec(
    name="qat", summary="quantization-aware distillation from the full-precision upstream on unlabelled audio "
    "(1 bit: binary, else uniform)",
    grammar="qat:BITS[:sSTEPS]", parse=_parse, label=lambda spec: f"qat{spec.bits}", build=_build, trains=True,
    option_fields=OPTION_FIELDS, order=1))

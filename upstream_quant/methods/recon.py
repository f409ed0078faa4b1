"""Block-wise reconstruction (the idea of AdaRound, BRECQ and OmniQuant), label-free, for 2 bits.

Each transformer block is first quantized with sequential GPTQ; then its quantized copy is trained
for a few hundred steps on the unlabelled calibration data to reproduce the full-precision
block's output: every weight learns whether to round down or up (a rounding variable h in [0, 1],
AdaRound's rectified sigmoid, started at the fraction GPTQ rounded, so near-ties flip first) and
every row (group) learns its scale. The forward pass always uses the hard rounding, its gradient
passed straight through to h: measured, AdaRound's soft forward starts from the error-compensated
continuous weights, which are ~10x worse than GPTQ's rounded ones, and a few hundred steps do not
recover that. Nothing else changes (norms, biases, the other blocks); one block's inputs and
targets are in memory at a time. The result is kept only if its error on the calibration data is
below GPTQ's, so it never does worse than its start.

Written by hand: AdaRound/BRECQ code exists only inside research repositories tied to CNN
layouts or CUDA LLM pipelines; this runs on any block that upstream_quant.sequential finds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .gptq import GPTQConfig, gptq
from ..qweight import QuantizedLayer, QuantizedWeight, prepare_input
from ..sequential import Call, Segment, first_output
from . import MethodSpec, common_label, parse_options, register

ZETA, GAMMA = 1.1, -0.1  # AdaRound's stretch of the sigmoid, so that 0 and 1 are reached


@dataclass(frozen=True)
class ReconConfig:
    bits: int = 2
    group_size: int | None = None  # inputs per scale; None: one scale per output row
    symmetric: bool = False
    steps: int = 300  # optimizer steps per block
    batch: int = 4  # calibration calls (utterances) per step
    lr: float = 1e-2  # rounding variables
    scale_lr: float = 1e-3  # log-scales
    seed: int = 0
    damp: float = 0.01
    act_order: bool = True
    scale_search: str = "hessian"
    act_bits: int | None = None
    targets: tuple = ("transformer",)
    rotate: bool = False  # GPTQ and reconstruction in a rotated input basis (upstream_quant.rotation)

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise ValueError(f"reconstruction bits must be in 2..8, got {self.bits}")
        if self.steps < 0 or self.batch < 1:
            raise ValueError(f"steps must be >= 0 and batch >= 1, got steps={self.steps}, batch={self.batch}")

    needs_calibration = True
    needs_hessian = True
    sequential = True  # always: each block starts from the quantized blocks before it
    layer_types = ("linear",)

    def gptq(self) -> GPTQConfig:
        return GPTQConfig(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric, damp=self.damp,
                          act_bits=self.act_bits, targets=self.targets, act_order=self.act_order,
                          scale_search=self.scale_search)


def quantize_recon_init(weight: torch.Tensor, config: ReconConfig, stats) -> QuantizedWeight:
    """GPTQ's result, carrying its pre-rounding values (``latent``) for `refine_block`."""
    qweight, latent = gptq(weight, stats, config.gptq())
    qweight.latent = latent
    return qweight


class SoftQuantLinear(nn.Module):
    """A QuantizedLayer during reconstruction: codes floor + round(h(V)), h in [0, 1] learnt through
    the straight-through estimator, scales learnt."""

    def __init__(self, layer: QuantizedLayer, latent: torch.Tensor):
        super().__init__()
        self.layer = layer
        levels = 2**layer.bits - 1
        self.register_buffer("base", torch.clamp(torch.floor(latent), 0, levels - 1))
        frac = torch.clamp(latent - self.base, 0, 1)
        p = torch.clamp((frac - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
        self.v = nn.Parameter(torch.log(p / (1 - p)))
        self.log_scale = nn.Parameter(torch.zeros_like(layer.scale))

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def weight(self) -> torch.Tensor:
        h = self.h()
        codes = self.base + h + ((h >= 0.5).float() - h).detach()  # hard value, gradient to h
        rows, groups = self.layer.scale.shape
        scale = self.layer.scale * torch.exp(self.log_scale)
        w = (codes.view(rows, groups, -1) - self.layer.zero[:, :, None]) * scale[:, :, None]
        return w.view_as(codes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(prepare_input(self.layer, x), self.weight().to(x.dtype), self.layer.bias)

    def hardened(self) -> QuantizedLayer:
        with torch.no_grad():
            codes = (self.base + (self.h() >= 0.5).float()).to(torch.uint8)
            scale = self.layer.scale * torch.exp(self.log_scale)
        q = QuantizedWeight(codes, scale, self.layer.zero.clone(), self.layer.bits, self.layer.group_size, "recon")
        # QuantizedLayer reads the kind and bias from the layer it replaces: a bias-free stand-in
        out = QuantizedLayer(nn.Linear(1, 1, bias=False), q, self.layer.act.bits if self.layer.act is not None else None,
                             self.layer.rotation)
        out.bias = self.layer.bias
        return out


def _error(block: nn.Module, calls: list[Call], inputs: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    """Relative squared error of the block's outputs over all calibration calls."""
    outs = Segment(block, calls).run(inputs)
    num = sum(float(((out - t) ** 2).sum()) for out, t in zip(outs, targets))
    return num / max(sum(float((t**2).sum()) for t in targets), 1e-12)


def refine_block(config: ReconConfig, block: nn.Module, path: str, layers: dict[str, QuantizedLayer], calls: list[Call],
                 inputs: list[torch.Tensor], targets: list[torch.Tensor], progress: bool = True) -> dict:
    """Train the block's rounding and scales to reproduce `targets` from `inputs` (in place)."""
    start_error = _error(block, calls, inputs, targets)
    soft = {}
    for name, layer in layers.items():
        latent = getattr(layer, "latent", None)
        if latent is None:
            raise ValueError(f"{path}.{name}: reconstruction starts from GPTQ, which left no pre-rounding values")
        soft[name] = SoftQuantLinear(layer, latent)
        del layer.latent
        block.set_submodule(name, soft[name])
    frozen = {p: p.requires_grad for p in block.parameters()}
    for p in block.parameters():
        p.requires_grad_(False)
    for s in soft.values():
        s.v.requires_grad_(True)
        s.log_scale.requires_grad_(True)
    opt = torch.optim.Adam([{"params": [s.v for s in soft.values()], "lr": config.lr},
                            {"params": [s.log_scale for s in soft.values()], "lr": config.scale_lr}])
    generator = torch.Generator().manual_seed(config.seed)
    # Each call's loss is relative to the block's own contribution (its output minus its input,
    # for residual blocks): relative to the output, the residual stream would dwarf both the error
    # and the regulariser's weight.
    scale = [max(float(((t - x) ** 2).mean() if t.shape == x.shape else (t**2).mean()), 1e-12)
             for t, x in zip(targets, inputs)]
    was_training = block.training
    block.eval()  # dropout off: the targets were computed without it
    curve, every = [], max(1, config.steps // 50)  # about 50 points of the loss (training curves, bench.runner)
    try:
        with torch.enable_grad():
            for step in tqdm(range(config.steps), desc=f"reconstruct {path}", disable=not progress, leave=False):
                picks = torch.randint(len(calls), (config.batch,), generator=generator).tolist()
                loss = sum(F.mse_loss(first_output(block(inputs[i], *calls[i].args[1:], **calls[i].kwargs)), targets[i]) / scale[i]
                           for i in picks) / len(picks)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if step % every == 0 or step == config.steps - 1:
                    curve.append((step, round(loss.item(), 6)))
    finally:
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        block.train(was_training)
    hard = {name: s.hardened() for name, s in soft.items()}
    for name, layer in hard.items():
        block.set_submodule(name, layer)
    end_error = _error(block, calls, inputs, targets)
    kept = math.isfinite(end_error) and end_error < start_error
    if not kept:  # training made it worse on its own objective: back to GPTQ's layers
        for name, layer in layers.items():
            block.set_submodule(name, layer)
    return {"block": path, "gptq_error": start_error, "recon_error": end_error, "kept": kept, "loss_curve": curve}


def _parse(token: str, bits: int, options: list[str]) -> dict:
    return parse_options(token, options, group=True, act=True, asym=True, steps="steps", rot=True)


def _config(spec, targets: tuple = ("transformer",)) -> ReconConfig:
    sym = {} if spec.symmetric is None else {"symmetric": spec.symmetric}
    steps = {} if spec.steps is None else {"steps": spec.steps}
    return ReconConfig(bits=spec.bits, group_size=spec.group_size, act_bits=spec.act_bits, targets=targets,
                       rotate=bool(spec.rotate), **sym, **steps)


register(MethodSpec(
    name="recon", summary="GPTQ, then block-wise reconstruction of the rounding and scales against the "
    "full-precision block (label-free)",
    grammar="recon:BITS[:gN][:asym|sym][:sSTEPS][:aN][:rot]", parse=_parse, label=common_label, config=_config,
    order=5, config_cls=ReconConfig, weight_fn=quantize_recon_init, refine=refine_block))

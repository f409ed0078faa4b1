"""k-bit uniform weights (k = 2..8): symmetric or asymmetric, per output row or per group of
inputs, with the clipping range from min-max, an MSE search, or an output-cosine search.

The searches scale the min-max range by factors on a grid that includes 1 (min-max itself), so
neither can do worse than min-max on its own objective.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..calibration import LayerStats
from ..qweight import QuantizedWeight, dequantize, grouped
from . import MethodSpec, common_label, parse_options, register

CLIP_METHODS = ("minmax", "mse", "output", "cosine", "hessian")


@dataclass(frozen=True)
class UniformConfig:
    bits: int = 4
    group_size: int | None = None  # inputs per scale; None: one scale per output row
    symmetric: bool = True
    clip: str = "minmax"  # minmax | mse | output | cosine | hessian (the last three need calibration data)
    grid: int = 100  # search points between alpha and beta (myQASR: 0.01 .. 1.2, 100 points)
    alpha: float = 0.01
    beta: float = 1.2
    act_bits: int | None = None
    targets: tuple[str, ...] = ("transformer",)
    rotate: bool = False  # round each linear's weight in a rotated input basis (upstream_quant.rotation)

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise ValueError(f"uniform bits must be in 2..8 (use BinaryConfig for 1 bit), got {self.bits}")
        if self.clip not in CLIP_METHODS:
            raise ValueError(f"clip must be one of {CLIP_METHODS}, got {self.clip!r}")

    @property
    def needs_calibration(self) -> bool:
        return self.clip in ("cosine", "output", "hessian")

    @property
    def needs_grads(self) -> bool:
        return self.clip == "hessian"

    @property
    def needs_hessian(self) -> bool:
        return self.clip == "output"

    @property
    def layer_types(self) -> tuple[str, ...]:  # the calibrated searches take a layer's inputs as rows
        return ("linear",) if self.needs_calibration else ("linear", "conv1d")


def minmax_params(w: torch.Tensor, bits: int, symmetric: bool, ratio: torch.Tensor | float = 1.0):
    """Scale and zero-point per group of `w` (out, groups, size), range shrunk by `ratio`."""
    levels = 2**bits - 1
    if symmetric:
        # levels -2^(b-1) .. 2^(b-1)-1 around zero; s0 = max|W| / (2^(b-1) - 0.5) (myQASR's start)
        scale = w.abs().amax(-1) * ratio / (2 ** (bits - 1) - 0.5)
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        lo, hi = w.amin(-1) * ratio, w.amax(-1) * ratio
        lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
        scale = (hi - lo) / levels
        zero = torch.round(-lo / scale.clamp(min=1e-12))
    return scale.clamp(min=1e-8), zero


def round_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    scale16 = scale.half().float()  # codes are chosen against the scale that will be stored
    if bits == 1:  # the centred binary's zero point is not an integer: the nearer of its two levels
        return torch.clamp(torch.round(w / scale16[..., None] + zero.half().float()[..., None]), 0, 1)
    return torch.clamp(torch.round(w / scale16[..., None]) + zero.half().float()[..., None], 0, 2**bits - 1)


def _quantize_with(w, bits, symmetric, ratio):
    scale, zero = minmax_params(w, bits, symmetric, ratio)
    codes = round_codes(w, scale, zero, bits)
    return codes, scale, zero


def _ratios(config: UniformConfig) -> torch.Tensor:
    grid = torch.linspace(config.alpha, config.beta, config.grid)
    return torch.unique(torch.cat([grid, torch.ones(1)]))


def search_range(w: torch.Tensor, bits: int, symmetric: bool, ratios, col_weight: torch.Tensor | None = None):
    """Per row and group of `w` (out, groups, size): the shrink factor of the min-max range whose
    rounding error, sum_j c_j (w_j - q_j)^2, is least (c = 1: weight MSE; c = diag(X^T X): the
    expected output error). 1 is always on the grid, so min-max is never beaten on the objective."""
    c = torch.ones_like(w[:1]) if col_weight is None else col_weight.reshape(1, w.shape[1], w.shape[2]).to(w.dtype)
    best_scale, best_zero = minmax_params(w, bits, symmetric)
    best_loss = torch.full(best_scale.shape, float("inf"), device=w.device)
    for ratio in torch.unique(torch.cat([torch.as_tensor(ratios, dtype=torch.float32), torch.ones(1)])).tolist():
        scale, zero = minmax_params(w, bits, symmetric, ratio)
        scale, zero = scale.half().float(), zero.half().float()
        q = (round_codes(w, scale, zero, bits) - zero[..., None]) * scale[..., None]
        loss = ((w - q) ** 2 * c).sum(-1)
        better = loss < best_loss
        best_scale, best_zero = torch.where(better, scale, best_scale), torch.where(better, zero, best_zero)
        best_loss = torch.minimum(loss, best_loss)
    return best_scale, best_zero


def quantize_uniform(weight: torch.Tensor, config: UniformConfig, stats: LayerStats | None = None) -> QuantizedWeight:
    w = grouped(weight.detach().float(), config.group_size)
    best = _quantize_with(w, config.bits, config.symmetric, 1.0)
    if config.clip in ("mse", "output"):
        # per row and group: the range factor with the smallest (output-weighted) rounding error
        col_weight = None
        if config.clip == "output":
            if stats is None or stats.hessian is None or stats.rows == 0:
                raise ValueError("clip='output' needs calibration data (the layer's inputs)")
            col_weight = torch.diag(stats.hessian).float() / stats.rows
        scale, zero = search_range(w, config.bits, config.symmetric, _ratios(config), col_weight)
        best = (round_codes(w, scale, zero, config.bits), scale, zero)
    elif config.clip in ("cosine", "hessian"):
        if stats is None or stats.sample is None or (config.clip == "hessian" and stats.grad_sample is None):
            raise ValueError(f"clip={config.clip!r} needs calibration audio (the layer's inputs"
                             f"{' and output gradients' if config.clip == 'hessian' else ''})")
        x = stats.sample.float()
        ref = F.linear(x, weight.detach().float().reshape(weight.shape[0], -1))
        score = _cosine if config.clip == "cosine" else _hessian_score(stats.grad_sample.float())
        best_score = score(ref, x, best, config, weight.shape)
        for ratio in _ratios(config):  # one range factor per layer, as myQASR searches it
            cand = _quantize_with(w, config.bits, config.symmetric, float(ratio))
            value = score(ref, x, cand, config, weight.shape)
            if value > best_score:
                best, best_score = cand, value
    codes, scale, zero = best
    return QuantizedWeight(codes.to(torch.uint8).reshape(weight.shape), scale, zero, config.bits, config.group_size, f"uniform-{config.clip}")


def _hessian_score(g2: torch.Tensor):
    """myQASR's "Hessian" objective, -mean((g (O_fp - O_q))^2), g^2 from collect_stats(need_grads=True)."""
    def score(ref, x, cand, config, shape) -> float:
        codes, scale, zero = cand
        deq = dequantize(codes.reshape(shape[0], -1), scale.half().float(), zero.half().float(), config.group_size)
        return -float((g2 * (ref - F.linear(x, deq)) ** 2).mean())
    return score


def _cosine(ref, x, cand, config, shape) -> float:
    codes, scale, zero = cand
    deq = dequantize(codes.reshape(shape[0], -1), scale.half().float(), zero.half().float(), config.group_size)
    out = F.linear(x, deq)
    return float(F.cosine_similarity(ref.flatten(), out.flatten(), dim=0))


def _parse(token: str, bits: int, options: list[str]) -> dict:
    return parse_options(token, options, group=True, clips=CLIP_METHODS, act=True, rot=True)


def _config(spec, targets: tuple = ("transformer",)) -> UniformConfig:
    sym = {} if spec.symmetric is None else {"symmetric": spec.symmetric}
    return UniformConfig(bits=spec.bits, group_size=spec.group_size, clip=spec.clip, act_bits=spec.act_bits,
                         targets=targets, rotate=bool(spec.rotate), **sym)


register(MethodSpec(
    name="uniform", summary="round-to-nearest k-bit levels; min-max, weight-MSE, output-aware, cosine or Hessian ranges",
    grammar=f"uniform:BITS[:gN][:{'|'.join(CLIP_METHODS)}][:aN][:rot]", parse=_parse, label=common_label, config=_config,
    order=3, bit_range=(2, 8),
    config_cls=UniformConfig, weight_fn=quantize_uniform))

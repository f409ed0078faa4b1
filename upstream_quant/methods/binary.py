"""1-bit weights: sign(W) times a per-row (or per-group) scale alpha = mean |W|, the closed-form
minimiser of ||W - alpha * sign(W)||^2 (XNOR-Net); optionally around a per-row mean."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..qweight import QuantizedWeight, grouped
from . import MethodSpec, common_label, parse_options, register


@dataclass(frozen=True)
class BinaryConfig:
    group_size: int | None = None  # inputs per scale; None: one scale per output row
    center: bool = False  # subtract the per-row (group) mean before taking signs
    act_bits: int | None = None
    targets: tuple[str, ...] = ("transformer",)
    rotate: bool = False  # signs of the weight in a rotated input basis (upstream_quant.rotation)

    @property
    def bits(self) -> int:
        return 1


def centred_params(w: torch.Tensor, col_weight: torch.Tensor | None = None, iters: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of the best two levels per group of ``w`` (out, groups, size), as
    (code - zero) * scale with codes 0 / 1: the centred binary, levels lo and hi anywhere (not one
    of them at zero, as a 1-bit min-max range would put it). Weighted 2-means (Lloyd) from
    mean +- mean |w - mean|: each level the weighted mean of the weights nearer to it, the
    threshold midway; ``col_weight`` (size) weights each input (GPTQ: the Hessian's diagonal, the
    expected output error). Written here because no library does weighted 1-D 2-means in batch."""
    c = torch.ones_like(w[:1]) if col_weight is None else col_weight.reshape(1, w.shape[1], w.shape[2]).to(w.dtype)
    c = c.expand_as(w).clamp(min=1e-12)
    mean = (c * w).sum(-1) / c.sum(-1)
    alpha = (c * (w - mean[..., None]).abs()).sum(-1) / c.sum(-1)
    lo, hi = mean - alpha, mean + alpha
    for _ in range(iters):
        upper = w >= ((lo + hi) / 2)[..., None]
        cu, cl = (c * upper).sum(-1), (c * ~upper).sum(-1)
        hi = torch.where(cu > 0, (c * w * upper).sum(-1) / cu.clamp(min=1e-12), hi)
        lo = torch.where(cl > 0, (c * w * ~upper).sum(-1) / cl.clamp(min=1e-12), lo)
    scale = (hi - lo).clamp(min=1e-8)
    return scale, -lo / scale


def binarize(weight: torch.Tensor, config: BinaryConfig) -> QuantizedWeight:
    w = grouped(weight.detach().float(), config.group_size)
    mean = w.mean(-1, keepdim=True) if config.center else torch.zeros_like(w[..., :1])
    r = w - mean
    alpha = r.abs().mean(-1, keepdim=True).clamp(min=1e-8)
    codes = (r >= 0).to(torch.uint8)
    # (c - zero) * scale = +-alpha + mean  with scale = 2 alpha, zero = 1/2 - mean / (2 alpha)
    scale = (2 * alpha).squeeze(-1)
    zero = (0.5 - mean / (2 * alpha)).squeeze(-1)
    return QuantizedWeight(codes.reshape(weight.shape), scale, zero, 1, config.group_size, "binary")


def _parse(token: str, bits: int, options: list[str]) -> dict:
    if bits != 1:
        raise ValueError(f"quantization {token!r}: binary weights are 1 bit (binary:1)")
    return parse_options(token, options, group=True, act=True, rot=True)


def _config(spec, targets: tuple = ("transformer",)) -> BinaryConfig:
    if spec.symmetric is not None:
        raise ValueError("binary weights have no asymmetric variant (use center=True through the Python API)")
    return BinaryConfig(group_size=spec.group_size, act_bits=spec.act_bits, targets=targets, rotate=bool(spec.rotate))


register(MethodSpec(
    name="binary", summary="1-bit sign weights with a mean-magnitude scale per row or group (XNOR-Net)",
    grammar="binary:1[:gN][:aN][:rot]", parse=_parse, label=common_label, config=_config, order=2, bit_range=(1, 1),
    config_cls=BinaryConfig, weight_fn=lambda w, cfg, stats: binarize(w, cfg)))

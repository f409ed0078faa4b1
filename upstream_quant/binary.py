"""1-bit weights: sign(W) times a per-row (or per-group) scale alpha = mean |W|, the closed-form
minimiser of ||W - alpha * sign(W)||^2 (XNOR-Net); optionally around a per-row mean."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .qweight import QuantizedWeight, grouped


@dataclass(frozen=True)
class BinaryConfig:
    group_size: int | None = None  # inputs per scale; None: one scale per output row
    center: bool = False  # subtract the per-row (group) mean before taking signs
    act_bits: int | None = None
    targets: tuple[str, ...] = ("transformer",)

    @property
    def bits(self) -> int:
        return 1


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

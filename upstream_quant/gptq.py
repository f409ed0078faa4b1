"""GPTQ (Frantar et al., 2023): k-bit uniform weights with second-order error compensation.

Label-free: it needs only X^T X of each layer's inputs on a few unlabelled utterances. Columns are
quantized one at a time and the rounding error of each is spread over the not-yet-quantized
columns through the inverse Hessian. Written here because no maintained package offers it for
arbitrary torch modules on the CPU (the GPTQ packages target CUDA LLM kernels).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .calibration import LayerStats
from .qweight import QuantizedWeight
from .uniform import minmax_params, round_codes


@dataclass(frozen=True)
class GPTQConfig:
    bits: int = 4
    group_size: int | None = None
    symmetric: bool = True
    damp: float = 0.01  # fraction of the mean Hessian diagonal added for stability
    block: int = 128  # columns updated together (lazy batch updates)
    act_bits: int | None = None
    targets: tuple[str, ...] = ("transformer",)

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise ValueError(f"GPTQ bits must be in 2..8, got {self.bits}")

    @property
    def needs_calibration(self) -> bool:
        return True


def quantize_gptq(weight: torch.Tensor, config: GPTQConfig, stats: LayerStats | None) -> QuantizedWeight:
    if stats is None or stats.hessian is None or stats.rows == 0:
        raise ValueError("GPTQ needs calibration audio (the layer's input statistics)")
    W = weight.detach().float().clone()
    rows, cols = W.shape
    gs = config.group_size or cols
    if cols % gs:
        raise ValueError(f"group_size {gs} does not divide the input width {cols}")
    H = stats.hessian.to(W.device).float() * (2.0 / stats.rows)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += config.damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=W.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    codes = torch.zeros_like(W, dtype=torch.uint8)
    scales = torch.zeros(rows, cols // gs, device=W.device)
    zeros = torch.zeros_like(scales)
    for i1 in range(0, cols, config.block):
        i2 = min(i1 + config.block, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % gs == 0:  # the group's range from its current (error-updated) weights
                g = col // gs
                block_w = torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :gs]
                scale, zero = minmax_params(block_w[:, None, :], config.bits, config.symmetric)
                scales[:, g], zeros[:, g] = scale[:, 0].half().float(), zero[:, 0].half().float()
            g = col // gs
            w = W1[:, i]
            c = round_codes(w[:, None, None], scales[:, g : g + 1], zeros[:, g : g + 1], config.bits)[:, 0, 0]
            q = (c - zeros[:, g]) * scales[:, g]
            codes[:, col] = c.to(torch.uint8)
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return QuantizedWeight(codes, scales, zeros, config.bits, config.group_size, "gptq")

"""GPTQ (Frantar et al., 2023): k-bit uniform weights with second-order error compensation.

Label-free: it needs only X^T X of each layer's inputs on a few unlabelled utterances. Columns are
quantized one at a time and the rounding error of each is spread over the not-yet-quantized
columns through the inverse Hessian. Written here because no maintained package offers it for
arbitrary torch modules on the CPU (the GPTQ packages target CUDA LLM kernels).

What makes it hold at 3 bits (each can be turned off, for ablations):
- ``sequential``: layers are quantized in execution order, each with statistics collected with the
  already-quantized layers before it in place (upstream_quant.sequential), so later layers
  compensate the earlier layers' error instead of assuming full-precision inputs;
- ``act_order``: columns are quantized in order of decreasing Hessian diagonal (the inputs with
  the most energy first, while the most columns are left to absorb their error);
- ``scale_search="hessian"``: each row's (group's) range is chosen before the loop by the output
  error it causes, sum_j H_jj (w_j - q_j)^2 (the expected ||X (w - q)||^2 under independent rounding
  errors), over shrink factors of the min-max range; min-max alone wastes levels on outliers.
With ``act_order`` or a search, the scales are fixed up front ("static groups"), so the groups stay
contiguous in the stored format whatever the column order.

At 1 bit (zero points required) the two levels of each row or group are placed by weighted
2-means on the Hessian's diagonal (binary.centred_params): a centred binary whose signs GPTQ
then chooses column by column, compensating each column's error as at any width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..calibration import LayerStats
from ..qweight import QuantizedWeight, grouped
from .binary import centred_params
from .uniform import minmax_params, round_codes, search_range
from . import MethodSpec, common_label, parse_options, register

SCALE_SEARCHES = ("minmax", "hessian")


@dataclass(frozen=True)
class GPTQConfig:
    bits: int = 4
    group_size: int | None = None
    symmetric: bool = True
    damp: float = 0.01  # fraction of the mean Hessian diagonal added for stability
    block: int = 128  # columns updated together (lazy batch updates)
    act_bits: int | None = None
    targets: tuple = ("transformer",)
    sequential: bool = True
    act_order: bool = True
    scale_search: str = "hessian"
    grid: int = 40  # shrink factors of the min-max range searched, in [0.2, 1]
    rotate: bool = False  # round each weight in a rotated input basis (upstream_quant.rotation)

    def __post_init__(self):
        if not 1 <= self.bits <= 8:
            raise ValueError(f"GPTQ bits must be in 1..8, got {self.bits}")
        if self.bits == 1 and self.symmetric:
            raise ValueError("GPTQ at 1 bit is a centred binary (two levels per row or group, anywhere): "
                             "it needs zero points (gptq:1:asym, symmetric=False)")
        if self.scale_search not in SCALE_SEARCHES:
            raise ValueError(f"GPTQ scale_search must be one of {SCALE_SEARCHES}, got {self.scale_search!r}")

    @property
    def needs_calibration(self) -> bool:
        return True

    needs_hessian = True
    layer_types = ("linear",)  # GPTQ needs a layer's inputs as rows: no convolutions


def gptq(weight: torch.Tensor, stats: LayerStats | None, config: GPTQConfig) -> tuple[QuantizedWeight, torch.Tensor]:
    """The quantized weight, and each weight's value in code units just before it was rounded
    (the error-compensated weight / scale + zero), from which block reconstruction starts."""
    if stats is None or stats.hessian is None or stats.rows == 0:
        raise ValueError("GPTQ needs calibration data (the layer's input statistics); the layer ran on none")
    W = weight.detach().float().clone()
    rows, cols = W.shape
    gs = config.group_size or cols
    if cols % gs:
        raise ValueError(f"group_size {gs} does not divide the input width {cols}")
    H = stats.hessian.to(W.device).float() * (2.0 / stats.rows)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    static = config.act_order or config.scale_search != "minmax"
    if static:
        if config.bits == 1:  # the best two levels, each input weighted by its Hessian diagonal
            scales, zeros = centred_params(grouped(W, config.group_size),
                                           torch.diag(H) if config.scale_search == "hessian" else None)
        elif config.scale_search == "hessian":
            scales, zeros = search_range(grouped(W, config.group_size), config.bits, config.symmetric,
                                         torch.linspace(0.2, 1.0, config.grid), torch.diag(H))
        else:
            scales, zeros = minmax_params(grouped(W, config.group_size), config.bits, config.symmetric)
        scales, zeros = scales.half().float(), zeros.half().float()
    else:
        scales = torch.zeros(rows, cols // gs, device=W.device)
        zeros = torch.zeros_like(scales)
    perm = torch.argsort(torch.diag(H), descending=True) if config.act_order else torch.arange(cols, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    H += config.damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=W.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    # the stored group and original index of each column, in the order quantized, as Python ints:
    # read from a device tensor, each column would wait for the GPU's queue to drain
    groups, order = (perm // gs).tolist(), perm.tolist()

    codes = torch.zeros(rows, cols, dtype=torch.uint8, device=W.device)
    latent = torch.zeros(rows, cols, device=W.device)
    for i1 in range(0, cols, config.block):
        i2 = min(i1 + config.block, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            g = groups[col]
            if not static and col % gs == 0:  # the group's range from its current (error-updated) weights
                block_w = torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :gs]
                scale, zero = (centred_params(block_w[:, None, :]) if config.bits == 1
                               else minmax_params(block_w[:, None, :], config.bits, config.symmetric))
                scales[:, g], zeros[:, g] = scale[:, 0].half().float(), zero[:, 0].half().float()
            w = W1[:, i]
            s, z = scales[:, g], zeros[:, g]
            c = round_codes(w[:, None, None], s[:, None], z[:, None], config.bits)[:, 0, 0]
            q = (c - z) * s
            original = order[col]
            codes[:, original] = c.to(torch.uint8)
            latent[:, original] = w / s + z
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return QuantizedWeight(codes, scales, zeros, config.bits, config.group_size, "gptq"), latent


def quantize_gptq(weight: torch.Tensor, config: GPTQConfig, stats: LayerStats | None) -> QuantizedWeight:
    return gptq(weight, stats, config)[0]


def _parse(token: str, bits: int, options: list[str]) -> dict:
    return parse_options(token, options, group=True, act=True, asym=True, flags=("plain",), rot=True)


def _config(spec, targets: tuple = ("transformer",)) -> GPTQConfig:
    sym = {} if spec.symmetric is None else {"symmetric": spec.symmetric}
    variant = {"sequential": False, "act_order": False, "scale_search": "minmax"} if spec.plain else {}
    return GPTQConfig(bits=spec.bits, group_size=spec.group_size, act_bits=spec.act_bits, targets=targets,
                      rotate=bool(spec.rotate), **sym, **variant)


register(MethodSpec(
    name="gptq", summary="GPTQ: error-compensating rounding from calibration inputs (sequential, act-order, "
    "Hessian range search; plain: as first published; 1 bit with asym: a centred binary)",
    grammar="gptq:BITS[:gN][:asym|sym][:plain][:aN][:rot]", parse=_parse, label=common_label, config=_config,
    order=4, config_cls=GPTQConfig, weight_fn=quantize_gptq))

"""A quantized weight and the module that runs with it.

Every method produces the same representation: integer codes in [0, 2^bits), and per output row
(or per row and group of `group_size` inputs) a scale and a zero-point, so that
`W = (codes - zero) * scale`. Scales and zero-points are rounded to fp16 when created, so the
dequantized weight computed here is exactly the one a packed file reloads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizedWeight:
    codes: torch.Tensor  # uint8, same shape as the weight
    scale: torch.Tensor  # float32 holding fp16 values, (out, groups)
    zero: torch.Tensor  # float32 holding fp16 values, (out, groups)
    bits: int
    group_size: int | None  # None: one group spanning each row
    method: str

    def __post_init__(self):
        self.scale = self.scale.to(torch.float16).to(torch.float32)
        self.zero = self.zero.to(torch.float16).to(torch.float32)

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero, self.group_size)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int | None) -> torch.Tensor:
    rows = codes.shape[0]
    flat = codes.reshape(rows, -1).to(torch.float32)
    groups = scale.shape[1]
    w = (flat.view(rows, groups, -1) - zero[:, :, None]) * scale[:, :, None]
    return w.reshape(codes.shape)


def grouped(weight: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """(out, in...) -> (out, groups, group_size) view of the flattened rows."""
    check_group_size(group_size)
    rows = weight.shape[0]
    flat = weight.reshape(rows, -1)
    cols = flat.shape[1]
    size = cols if group_size is None else group_size
    if cols % size:
        raise ValueError(f"group_size {size} does not divide the input width {cols}")
    return flat.reshape(rows, cols // size, size)


def check_act_bits(bits: int | None) -> None:
    """Activation bits: None (full precision) or 2..16; 1 bit has no symmetric level to scale to
    (every input would become NaN) and 0 is not 'none'."""
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16):
        raise ValueError(f"act_bits must be None or an integer in 2..16, got {bits!r}")


def check_group_size(group_size: int | None) -> None:
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size must be None (one group per row) or an integer >= 1, got {group_size!r}")


class ActivationQuant(nn.Module):
    """Optional fake quantization of a layer's input: symmetric, per tensor, dynamic scale."""

    def __init__(self, bits: int):
        super().__init__()
        check_act_bits(bits)
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qmax = 2 ** (self.bits - 1) - 1
        scale = x.detach().abs().amax().clamp(min=1e-8) / qmax
        return torch.clamp(torch.round(x / scale), -qmax - 1, qmax) * scale


class QuantizedLayer(nn.Module):
    """Replaces an nn.Linear or nn.Conv1d: keeps codes/scales/zeros (the state saved) and runs with
    the weight dequantized once, at construction: the same float32 weight on every device."""

    def __init__(self, original: nn.Module, qweight: QuantizedWeight, act_bits: int | None = None,
                 rotation: int | None = None):
        super().__init__()
        self.kind = "linear" if isinstance(original, nn.Linear) else "conv1d"
        if rotation is not None and self.kind != "linear":
            raise ValueError("rotated inputs (upstream_quant.rotation) are for linear layers only")
        # the seed of the rotation its inputs get before the product (the codes are of W R^T), or None
        self.rotation = rotation
        if self.kind == "conv1d":
            self.conv_args = {k: getattr(original, k) for k in ("stride", "padding", "dilation", "groups")}
        self.bits, self.group_size, self.method = qweight.bits, qweight.group_size, qweight.method
        device = qweight.codes.device
        self.register_buffer("codes", qweight.codes)
        self.register_buffer("scale", qweight.scale)
        self.register_buffer("zero", qweight.zero)
        self.register_buffer("weight", qweight.dequantize().to(device), persistent=False)
        bias = getattr(original, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        self.act = ActivationQuant(act_bits) if act_bits else None

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def _apply(self, fn, recurse=True):
        # keep the integer codes integral when the model is cast to another dtype
        codes = self.codes
        out = super()._apply(fn, recurse)
        self.codes = codes.to(self.weight.device)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = prepare_input(self, x)
        w = self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.kind == "linear":
            return F.linear(x, w, bias)
        return F.conv1d(x, w, bias, **self.conv_args)

    def extra_repr(self) -> str:
        rotated = "" if self.rotation is None else f", rotation={self.rotation}"
        return f"{self.kind}, {tuple(self.weight.shape)}, method={self.method}, bits={self.bits}, group_size={self.group_size}{rotated}"


def prepare_input(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a quantized layer (or its deployed form) does to its input before the product: the
    rotation its weight was rounded in (if any), then the optional input quantization."""
    if getattr(layer, "rotation", None) is not None:
        from .rotation import rotate

        x = rotate(x, layer.rotation)
    return x if layer.act is None else layer.act(x)

"""The deploy form of a quantized upstream: low-bit weights resident in memory, real kernels where
this device has them.

A quantized model as `quantize` returns it is the numerical reference: each `QuantizedLayer` keeps
its uint8 codes and a float32 dequantized weight (5 bytes a weight, full-precision speed).
`deploy(model, backend)` swaps each quantized layer for the form a backend runs:

- ``reference``: the layer as it is (the dequantized float path, what every other backend is
  checked against);
- ``int8-dynamic``: PyTorch's fbgemm int8 kernels (int8 weights, activations quantized to 8 bits
  per batch), CPU only, for symmetric 8-bit linear layers with one scale per row;
- ``int4-weight``: PyTorch's CPU int4 weight-only kernel (bf16 activations), for 4-bit layers with
  groups of 32/64/128/256;
- ``packed``: any width on any device: the codes stay bit-packed in memory (bits/8 bytes a weight
  plus fp16 scales) and are unpacked, one layer at a time, just before it runs.

``auto`` takes ``int8-dynamic`` where it can run and ``packed`` elsewhere (the CPU int4 kernel is
slower than fp32 at speech-encoder sizes; see README). Hand-written here because no library
keeps 1-3-bit weights packed on CPU; the kernels themselves are PyTorch's.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .packed import pack_codes
from .qweight import ActivationQuant, QuantizedLayer, dequantize

BACKENDS = ("reference", "int8-dynamic", "int4-weight", "packed")
INT4_GROUPS = (32, 64, 128, 256)


class DeployError(ValueError):
    """A backend cannot run a layer (bit width, group size, kind or device); names those that can."""


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first `n` codes of a `pack_codes` byte string (most significant bits first), in torch on
    the tensor's own device, as uint8."""
    if bits == 8:
        return packed[:n]
    if 8 % bits == 0:
        shifts = torch.arange(8 - bits, -1, -bits, device=packed.device, dtype=torch.uint8)
        return ((packed[:, None] >> shifts) & (2**bits - 1)).reshape(-1)[:n]
    stream = (packed[:, None] >> torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)) & 1
    stream = stream.reshape(-1)[: n * bits].reshape(n, bits).to(torch.int16)
    weights = (1 << torch.arange(bits - 1, -1, -1, device=packed.device, dtype=torch.int16))
    return (stream * weights).sum(1).to(torch.uint8)


class _Deployed(nn.Module):
    """What every deployed layer shares: the layer's kind, convolution arguments, bias and input
    quantization, taken from the `QuantizedLayer` it replaces."""

    backend = "reference"

    def __init__(self, layer: QuantizedLayer):
        super().__init__()
        self.kind, self.bits, self.group_size, self.method = layer.kind, layer.bits, layer.group_size, layer.method
        self.shape = tuple(layer.codes.shape)
        self.conv_args = getattr(layer, "conv_args", None)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.act = ActivationQuant(layer.act.bits) if layer.act is not None else None

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.shape}, backend={self.backend}, bits={self.bits}, group_size={self.group_size}"


class PackedLayer(_Deployed):
    """Codes bit-packed in memory; the weight is dequantized for the forward pass only."""

    backend = "packed"

    def __init__(self, layer: QuantizedLayer):
        super().__init__(layer)
        device = layer.codes.device
        self.register_buffer("packed", pack_codes(layer.codes, layer.bits).to(device))
        self.register_buffer("scale", layer.scale.detach().half())
        zero = layer.zero.detach()
        self.const_zero = float(zero.flatten()[0]) if bool((zero == zero.flatten()[0]).all()) else None
        self.register_buffer("zero", None if self.const_zero is not None else zero.half())

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        codes = unpack(self.packed, self.bits, math.prod(self.shape)).reshape(self.shape)
        scale = self.scale.float()
        zero = torch.full_like(scale, self.const_zero) if self.zero is None else self.zero.float()
        return dequantize(codes, scale, zero, self.group_size).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        w = self.weight(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias) if self.kind == "linear" else F.conv1d(x, w, bias, **self.conv_args)


class Int8DynamicLayer(_Deployed):
    """fbgemm's dynamic int8 linear built from the layer's own codes (no re-rounding of the
    weights); the inputs are quantized to 8 bits per batch by the kernel."""

    backend = "int8-dynamic"

    def __init__(self, layer: QuantizedLayer):
        super().__init__(layer)
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        ints = (layer.codes.to(torch.int16) - layer.zero.to(torch.int16)).to(torch.int8)
        with warnings.catch_warnings():  # PyTorch deprecates quantized tensors but still runs them on fbgemm
            warnings.simplefilter("ignore")
            qweight = torch._make_per_channel_quantized_tensor(
                ints.cpu(), layer.scale[:, 0].double().cpu(), torch.zeros(ints.shape[0], dtype=torch.long), 0)
            self.op = DynamicLinear(self.shape[1], self.shape[0], dtype=torch.qint8)
            self.op.set_weight_bias(qweight, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.op(x.float())
        return out if self.bias is None else out + self.bias

    def resident_bytes(self) -> int:
        weight, _ = self.op._packed_params._weight_bias()
        scales = weight.q_per_channel_scales()
        return weight.numel() + scales.numel() * scales.element_size() + _bytes(self.bias)


class Int4WeightLayer(_Deployed):
    """PyTorch's CPU int4 weight-only matmul (its own packing; activations in bf16)."""

    backend = "int4-weight"

    def __init__(self, layer: QuantizedLayer):
        super().__init__(layer)
        packed = torch._convert_weight_to_int4pack_for_cpu(layer.codes.to(torch.int32).cpu(), 1)
        scale = layer.scale.detach().float()
        # the kernel computes (q - 8) x scale + offset; ours is (q - zero) x scale
        offset = (8 - layer.zero.detach().float()) * scale
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", torch.stack([scale, offset], -1).transpose(0, 1).contiguous().bfloat16())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.shape[1]).to(torch.bfloat16)
        out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scales_and_zeros)
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.shape[0])
        return out if self.bias is None else out + self.bias.to(x.dtype)


_MODULES = {"packed": PackedLayer, "int8-dynamic": Int8DynamicLayer, "int4-weight": Int4WeightLayer}


def why_not(backend: str, layer: QuantizedLayer, device: torch.device) -> str | None:
    """None if `backend` can run `layer` on `device`, else the reason."""
    if backend in ("reference", "packed"):
        return None
    if device.type != "cpu":
        return f"{backend} uses PyTorch's CPU kernels; on {device.type} use packed or reference"
    if backend == "int8-dynamic":
        if layer.kind != "linear":
            # fbgemm's dynamic Conv1d exists, but on inputs that are not centred on zero (GELU
            # outputs, as in every speech front end) it gave cosines of 0.79-0.95 to the exact
            # result. The linear kernel over unfolded windows is accurate (cosine 0.9996) but
            # slower than oneDNN's fp32 convolution: HuBERT Base at 10 s ran at 0.79x fp32 with
            # CNN layers 1-6 on it, 0.59x with the CNN left in fp32 (measured, 2 cores)
            return "int8-dynamic runs linear layers only"
        if layer.bits != 8:
            return f"int8-dynamic needs 8-bit weights, not {layer.bits}"
        if layer.group_size is not None:
            return "int8-dynamic needs one scale per row (fbgemm's per-channel weights), not groups"
        if not bool((layer.zero == 128).all()):
            return "int8-dynamic needs symmetric weights (zero-point 128)"
        if layer.act is not None and layer.act.bits != 8:
            return f"int8-dynamic quantizes inputs to 8 bits; this layer's are {layer.act.bits}"
        return None
    if backend == "int4-weight":
        if layer.kind != "linear":
            return "int4-weight runs linear layers only"
        if layer.bits != 4:
            return f"int4-weight needs 4-bit weights, not {layer.bits}"
        if layer.group_size not in INT4_GROUPS:
            return f"int4-weight needs groups of {'/'.join(map(str, INT4_GROUPS))}, not {layer.group_size or 'one per row'}"
        if layer.act is not None:
            return "int4-weight keeps inputs in bf16; this layer quantizes them"
        return None
    raise DeployError(f"unknown backend {backend!r}; known: auto, {', '.join(BACKENDS)}")


def choose(layer: QuantizedLayer, device: torch.device) -> str:
    """``auto``: int8 kernels where they run, packed weights elsewhere."""
    return "int8-dynamic" if why_not("int8-dynamic", layer, device) is None else "packed"


def deploy(model: nn.Module, backend: str = "auto", device: str | torch.device | None = None) -> nn.Module:
    """A copy of `model` whose quantized layers run on `backend` (``auto`` or one of `BACKENDS`),
    in eval mode on `device` (default: the model's). Every layer is checked before any is built: a
    layer the backend cannot run is a `DeployError` naming it, the reason and the backends that can."""
    from .quantize import copy_module
    from .upstream import pick_device

    if backend != "auto" and backend not in BACKENDS:
        raise DeployError(f"unknown backend {backend!r}; known: auto, {', '.join(BACKENDS)}")
    first = next(iter(model.parameters()), None)
    target = pick_device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    if not layers:
        raise DeployError("the model has no quantized layers (quantize it first, or load a packed file)")
    plan = {}
    for name, layer in layers.items():
        chosen = choose(layer, target) if backend == "auto" else backend
        reason = why_not(chosen, layer, target)
        if reason:
            able = [b for b in BACKENDS if why_not(b, layer, target) is None]
            raise DeployError(f"backend {chosen} cannot run layer {name!r} ({layer.bits}-bit {layer.kind}, "
                              f"group_size {layer.group_size}) on {target}: {reason}; backends that can: {', '.join(able)}")
        plan[name] = chosen
    out = copy_module(model).to(target).eval()
    for name, chosen in plan.items():
        if chosen != "reference":
            out.set_submodule(name, _MODULES[chosen](out.get_submodule(name)).to(target))
    out.deploy_backends = plan
    return out


def _bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def resident_weight_bytes(model: nn.Module, quantized_only: bool = True) -> int:
    """Bytes of the tensors the model keeps in memory: of its quantized layers only (reference or
    deployed), or of everything (every parameter and buffer, non-persistent ones included)."""
    total = 0
    if not quantized_only:
        seen = set()
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += _bytes(t)
        return total + sum(m.resident_bytes() for m in model.modules() if isinstance(m, Int8DynamicLayer))
    for m in model.modules():
        if isinstance(m, Int8DynamicLayer):
            total += m.resident_bytes()
        elif isinstance(m, (QuantizedLayer, _Deployed)):
            total += sum(_bytes(t) for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)])
    return total

"""The deploy form of a quantized upstream: low-bit weights resident in memory, real kernels where
this device has them.

A quantized model as `quantize` returns it is the numerical reference: each `QuantizedLayer` keeps
its uint8 codes and a float32 dequantized weight (5 bytes a weight, full-precision speed).
`deploy(model, backend)` swaps each quantized layer for the form a backend runs:

- ``reference``: the layer as it is (the dequantized float path, what every other backend is
  checked against);
- ``int8-dynamic``: for symmetric layers of up to 8 bits with one scale per row or output
  channel (their codes are int8 values), int8 weights and inputs quantized to 8 bits as they come: on CPU oneDNN's int8 kernels as PyTorch
  ships them (linear and convolution layers, inputs per tensor); on CUDA torchao's int8 tensor
  (linear layers, inputs per token, cuBLAS's int8 GEMM), from the optional ``[gpu]`` extra;
- ``int4-weight``: PyTorch's CPU int4 weight-only kernel (bf16 activations), for 4-bit layers with
  groups of 32/64/128/256 (CPU only: on CUDA a layer takes ``packed``);
- ``packed``: any width on any device: the codes stay bit-packed in memory (bits/8 bytes a weight
  plus fp16 scales) and are unpacked, one layer at a time, just before it runs;
- ``packed-int8``: the same resident form, unpacked to int8 values and multiplied on PyTorch's
  int8 matmul with inputs quantized per token (CPU, linear layers with one scale per row).

``auto`` times, per layer shape on this machine, the reference path and the forms that keep the
bit width's memory (``int8-dynamic`` for 8-bit layers, ``packed-int8`` and ``packed``; the CPU
int4 kernel is slower than fp32 at speech-encoder sizes, see docs/deployment.md), and takes the
fastest; a low-bit form only where it beats the reference (`autotune`), so ``auto`` is never
slower than the model it replaces. ``compact`` takes, unmeasured, the first of those forms that
runs each layer: the bit width's memory whatever the speed. Hand-written here because no library keeps 1-3-bit weights
packed on CPU; the kernels themselves are PyTorch's.
"""
from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .packed import pack_codes
from .qweight import ActivationQuant, QuantizedLayer, dequantize

BACKENDS = ("reference", "int8-dynamic", "int4-weight", "packed", "packed-int8")
# per-layer choices rather than backends: ``auto`` (the fastest form, measured; never slower than
# the reference) and ``compact`` (the first form that keeps the bit width's memory, unmeasured)
CHOOSERS = ("auto", "compact")
# whole-model runtimes rather than layer forms: the model exported (`onnx_export`) and run there
RUNTIMES = ("onnxruntime", "onnxruntime-int8")
CHOICES = CHOOSERS + BACKENDS + RUNTIMES  # what `deploy`, suite specs (SPEC@CHOICE) and perf configs take
INT4_GROUPS = (32, 64, 128, 256)


class DeployError(ValueError):
    """A backend cannot run a layer (bit width, group size, kind or device); names those that can."""


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first `n` codes of a `pack_codes` byte string (most significant bits first), in torch on
    the tensor's own device, as uint8."""
    if bits == 8:
        return packed[:n]
    if bits <= 2:  # a table of each byte's codes: one gather, 1.5-2.5x faster than shifting (measured)
        return _byte_table(bits, packed.device).index_select(0, packed.to(torch.int32)).reshape(-1)[:n]
    if 8 % bits == 0:
        shifts = torch.arange(8 - bits, -1, -bits, device=packed.device, dtype=torch.uint8)
        return ((packed[:, None] >> shifts) & (2**bits - 1)).reshape(-1)[:n]
    stream = (packed[:, None] >> torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)) & 1
    stream = stream.reshape(-1)[: n * bits].reshape(n, bits).to(torch.int16)
    weights = (1 << torch.arange(bits - 1, -1, -1, device=packed.device, dtype=torch.int16))
    return (stream * weights).sum(1).to(torch.uint8)


@functools.cache
def _byte_table(bits: int, device: torch.device) -> torch.Tensor:
    """(256, 8 / bits) uint8: the codes each byte value holds, most significant first."""
    shifts = torch.arange(8 - bits, -1, -bits, dtype=torch.uint8)
    return ((torch.arange(256, dtype=torch.uint8)[:, None] >> shifts) & (2**bits - 1)).to(device)


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
        self.rotation = getattr(layer, "rotation", None)
        if self.rotation is not None:  # every backend's product is of the rotated inputs (upstream_quant.rotation)
            self.register_forward_pre_hook(_rotate_input)

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.shape}, backend={self.backend}, bits={self.bits}, group_size={self.group_size}"

    def resident_bytes(self) -> int:
        """Bytes of what the layer keeps in memory for its forward pass."""
        return sum(_bytes(t) for t in [*self.parameters(recurse=False), *self.buffers(recurse=False)])


def _rotate_input(module: nn.Module, args: tuple) -> tuple:
    from .rotation import rotate

    return (rotate(args[0], module.rotation), *args[1:])


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

    def zeros(self) -> torch.Tensor:
        """The zero points, one per row or group (float32), from the constant or the stored ones."""
        return torch.full(self.scale.shape, self.const_zero, device=self.scale.device) if self.zero is None else self.zero.float()

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        codes = unpack(self.packed, self.bits, math.prod(self.shape)).reshape(self.shape)
        return dequantize(codes, self.scale.float(), self.zeros(), self.group_size).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        w = self.weight(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias) if self.kind == "linear" else F.conv1d(x, w, bias, **self.conv_args)


class PackedInt8Layer(PackedLayer):
    """Codes bit-packed in memory as under ``packed``, unpacked per forward pass to int8 values
    (code - zero point) and multiplied on PyTorch's int8 matmul (``torch._int_mm``, oneDNN's on
    CPU: 1.7 ms for 500 x 768 x 3072 here, against 13 ms in fp32), with the inputs quantized to
    8 bits per token (symmetric). Resident memory is that of ``packed``; the int8 weight exists
    for one layer's forward pass at a time. A fractional zero point (centred binary weights) is
    split into its nearest integer, in the int8 product, and the rest, a per-row offset applied
    to the inputs' sums in float."""

    backend = "packed-int8"

    def __init__(self, layer: QuantizedLayer):
        super().__init__(layer)
        # one zero point, whole or half (binary: (c - 1/2) s = (2c - 1) s/2), below 7 bits: int8
        # arithmetic on the codes viewed as int8, no per-row offset
        doubled = None if self.const_zero is None else 2 * self.const_zero
        fits = doubled is not None and max(abs(doubled), abs(2 * (2**self.bits - 1) - doubled)) <= 127
        self.int_zero = int(doubled) if fits and float(doubled).is_integer() else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = unpack(self.packed, self.bits, math.prod(self.shape)).reshape(self.shape)
        scale = self.scale.float().reshape(-1)
        offset = None
        if self.int_zero is not None:  # 2c - 2z, at half the scale
            ints = codes.view(torch.int8) * 2 - self.int_zero
            scale = scale / 2
        else:
            zero = self.zeros().reshape(-1)
            whole = torch.round(zero)
            ints = signed_codes(codes, whole)
            if not bool((whole == zero).all()):  # (c - z) s = (c - round z) s + (round z - z) s
                offset = (whole - zero) * scale
        flat = x.reshape(-1, self.shape[1]).float()
        x_scale = flat.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
        x_ints = torch.round(flat / x_scale).to(torch.int8)
        out = (torch._int_mm(x_ints, ints.t()) * x_scale).mul_(scale)
        if offset is not None:
            out.add_((x_ints.sum(1, keepdim=True, dtype=torch.int32) * x_scale) * offset)  # the 8-bit inputs' sums
        if self.bias is not None:
            out.add_(self.bias.float())
        return out.reshape(*x.shape[:-1], self.shape[0]).to(x.dtype)


def quantize_input(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Per-tensor asymmetric 8-bit codes of `x` (the range of this very batch, as PyTorch's dynamic
    int8 kernels take it), as a uint8 tensor in `x`'s own memory layout, with its scale and zero
    point. A tensor whose last two dimensions are transposed in memory (a convolution's
    channels-last output) is quantized as it lies: transposing float activations cost more than
    the int8 convolution itself."""
    flip = not x.is_contiguous() and x.transpose(-1, -2).is_contiguous()
    dense = x.transpose(-1, -2) if flip else x.contiguous()
    lo, hi = (float(v) for v in torch.aminmax(dense))  # on a strided view, aminmax copies it first
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255, 1e-12)
    zero = int(min(max(round(-lo / scale), 0), 255))
    with warnings.catch_warnings():  # PyTorch deprecates quantized tensors; this one lives for a line, 3x faster than elementwise ops
        warnings.simplefilter("ignore")
        codes = torch.quantize_per_tensor(dense, scale, zero, torch.quint8).int_repr()
    return (codes.transpose(-1, -2) if flip else codes), scale, zero


def signed_codes(codes: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Codes minus their integer zero point (one per row or output channel) as int8 values, in the
    codes' shape: -128..127 for symmetric 8-bit codes, -8..7 at 4 bits. The caller makes sure the
    difference fits (`why_not`)."""
    rows = codes.reshape(codes.shape[0], -1).to(torch.int16) - zero.reshape(codes.shape[0], -1).to(torch.int16)
    return rows.to(torch.int8).reshape(codes.shape)


def _qlinear(*args) -> torch.Tensor:
    return torch.ops.onednn.qlinear_pointwise(*args)


def _qconv(*args) -> torch.Tensor:
    return torch.ops.onednn.qconv_pointwise(*args)


class Int8DynamicLayer(_Deployed):
    """oneDNN's int8 matmul and convolution (AMX or VNNI where the CPU has them) on the layer's own
    codes (no re-rounding of the weights); inputs are quantized to 8 bits per batch.

    The input zero point is folded into the bias (bias - scale x zero x the row sums of the
    weight) and the kernel is told it is 0: oneDNN's own zero-point compensation gave wrong
    outputs for convolutions 8192 frames wide or more (cosine 0.19 to the exact result, PyTorch
    2.13; fbgemm's dynamic Conv1d deviates the same way). A padded convolution is padded here,
    with the zero point, so that the folded bias holds at the edges too.

    oneDNN also got some small grouped convolutions wrong (8 or 16 channels a group with kernel
    16, PyTorch 2.13), so every layer is checked once, when built, against the exact result on a
    probe input; a layer the kernel gets wrong is a `DeployError`."""

    backend = "int8-dynamic"

    def __init__(self, layer: QuantizedLayer):
        super().__init__(layer)
        ints = signed_codes(layer.codes, layer.zero).cpu()
        self.register_buffer("w_scale", layer.scale.detach().reshape(-1).float().cpu().contiguous())
        # scale x sum of a row's (or output channel's) integer weights: what one unit of input zero point adds
        self.register_buffer("w_sums", self.w_scale * ints.reshape(ints.shape[0], -1).sum(1).float())
        self.w_zero = torch.zeros(ints.shape[0], dtype=torch.int32)
        if self.kind == "conv1d":
            a = self.conv_args
            self.pad = int(a["padding"][0])
            self.args = ([1, int(a["stride"][0])], [0, 0], [1, int(a["dilation"][0])], int(a["groups"]))
        self.single_channel = self.kind == "conv1d" and self.shape[1] == 1 and self.args[2][1] == 1
        if self.single_channel:
            # The waveform's convolution (one input channel; 5,120 weights in HuBERT) runs as an fp32
            # matmul over its windows, on its dequantized 8-bit weights: oneDNN's int8 convolution
            # writes its output time-major, and the group norm after it in wav2vec2-style front ends
            # then transposes 64 MB per 10 s, which cost more than the layer (measured, 2 cores).
            self.register_buffer("w_float", layer.weight.detach().reshape(self.shape[0], -1).float().cpu())
            self.w = torch.empty(0, dtype=torch.int8)
        elif self.kind == "linear":
            self.w = torch.ops.onednn.qlinear_prepack(ints, None)
        else:  # oneDNN convolves in 2-D: a height of one
            self.w = torch.ops.onednn.qconv_prepack(ints.unsqueeze(2), self.w_scale, 1.0, 0, *self.args, None)
        self.check(layer)

    def check(self, layer: QuantizedLayer, tolerance: float = 1e-4) -> None:
        """Compare with `layer` on the probe's own 8-bit codes (the kernel must be exact on them,
        to float rounding); off-centre inputs, so that the zero point matters."""
        gen = torch.Generator().manual_seed(0)
        if self.kind == "linear":
            probe = torch.randn(2, 8, self.shape[1], generator=gen)
        else:
            span = self.args[2][1] * (self.shape[2] - 1) + 1  # the kernel's reach, dilation included
            width = 4 * span * self.args[0][1] + 2
            probe = torch.randn(2, self.shape[1] * self.args[3], width, generator=gen)
        probe = probe + 0.5
        if not self.single_channel:
            codes, scale, zero = quantize_input(probe)
            probe = (codes.float() - zero) * scale
        with torch.no_grad():
            expected = layer(probe)  # on CPU, where this backend runs
            error = float((self(probe) - expected).abs().max() / expected.abs().max().clamp(min=1e-12))
        if not error <= tolerance:
            raise DeployError(f"oneDNN's int8 kernel computes this {tuple(self.shape)} {self.kind} wrongly "
                              f"(relative error {error:.2g} on a probe input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.single_channel:
            windows = F.pad(x.float(), (self.pad, self.pad))[:, 0].unfold(-1, self.shape[2], self.args[0][1])
            out = torch.matmul(self.w_float, windows.transpose(1, 2))
            return (out if self.bias is None else out + self.bias.float()[:, None]).to(x.dtype)
        codes, scale, zero = quantize_input(x.float())
        bias = -scale * zero * self.w_sums
        if self.bias is not None:
            bias = bias + self.bias.float()
        if self.kind == "linear":
            flat = codes.reshape(-1, self.shape[1])
            out = _qlinear(flat, scale, 0, self.w, self.w_scale, self.w_zero, bias, 1.0, 0, torch.float32, "none", [], "")
            return out.reshape(*x.shape[:-1], self.shape[0]).to(x.dtype)
        if self.pad:
            codes = F.pad(codes, (self.pad, self.pad), value=zero)
        codes = codes.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        out = _qconv(codes, scale, 0, self.w, self.w_scale, self.w_zero, bias, *self.args, 1.0, 0, torch.float32, "none", [], "")
        return out.squeeze(2).to(x.dtype)

    def resident_bytes(self) -> int:
        """Its tensors and oneDNN's packed weight (an opaque tensor, one byte a weight, outside the
        parameters and buffers)."""
        return super().resident_bytes() + self.w.numel() * self.w.element_size()


class TorchaoInt8Layer(_Deployed):
    """int8-dynamic on CUDA: torchao's int8 weight tensor with per-token dynamic int8 activations
    (its matmul is torch._int_mm, cuBLAS's int8 GEMM). The tensor is built from the layer's own
    codes and scales: torchao's ``quantize_`` would re-round the dequantized weight, which for
    ranges other than min-max (mse, output-aware) is another model."""

    backend = "int8-dynamic"

    def __init__(self, layer: QuantizedLayer):
        super().__init__(layer)
        from torchao.quantization import Int8Tensor
        from torchao.quantization.granularity import PerRow
        from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs

        scale = layer.scale.detach().reshape(-1, 1).float()
        tensor = Int8Tensor(signed_codes(layer.codes, layer.zero), scale, [1, self.shape[1]], torch.float32,
                            act_quant_kwargs=QuantizeTensorToInt8Kwargs(granularity=PerRow()))
        self.weight = nn.Parameter(tensor, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, None if self.bias is None else self.bias.to(x.dtype))

    def resident_bytes(self) -> int:
        return _bytes(self.weight.qdata) + _bytes(self.weight.scale) + _bytes(self.bias)


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


_MODULES = {"packed": PackedLayer, "int8-dynamic": Int8DynamicLayer, "int4-weight": Int4WeightLayer,
            "packed-int8": PackedInt8Layer}


def _module(backend: str, device: torch.device) -> type:
    """The deployed layer class of `backend` on `device` (torchao's int8 on CUDA, oneDNN's on CPU)."""
    return TorchaoInt8Layer if backend == "int8-dynamic" and device.type == "cuda" else _MODULES[backend]


def torchao_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


@functools.cache
def onednn_int8() -> bool:
    """Whether this PyTorch build runs oneDNN's int8 kernels (x86 builds do; others may not)."""
    try:
        w = torch.ops.onednn.qlinear_prepack(torch.ones(2, 4, dtype=torch.int8), None)
        torch.ops.onednn.qlinear_pointwise(torch.ones(1, 4, dtype=torch.uint8), 1.0, 0, w, torch.ones(2), torch.zeros(2, dtype=torch.int32),
                                           None, 1.0, 0, torch.float32, "none", [], "")
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def why_not(backend: str, layer: QuantizedLayer, device: torch.device) -> str | None:
    """None if `backend` can run `layer` on `device`, else the reason."""
    if backend in ("reference", "packed"):
        return None
    if backend == "int8-dynamic" and device.type == "cuda":
        if not torchao_available():
            return "int8-dynamic on cuda runs torchao's int8 kernels: pip install torchao==0.18.0 (the [gpu] extra)"
        if layer.kind != "linear":
            return "int8-dynamic on cuda runs linear layers only (torchao's int8 matmul)"
    elif device.type != "cpu":
        return f"{backend} uses PyTorch's CPU kernels; on {device.type} use packed or reference"
    if backend == "int8-dynamic":
        if device.type == "cpu" and not onednn_int8():
            return "this PyTorch build's oneDNN has no int8 matmul (torch.ops.onednn.qlinear_pointwise)"
        if layer.kind == "conv1d" and isinstance(layer.conv_args["padding"], str):
            return f"int8-dynamic needs a numeric convolution padding, not {layer.conv_args['padding']!r}"
        if layer.group_size is not None:
            return "int8-dynamic needs one scale per row or output channel, not groups"
        # symmetric codes of any width up to 8 are int8 values (code - 2^(b-1)): the int8 kernel
        # runs a 4-bit model exactly, at int8 speed and one byte a weight
        if not bool((layer.zero == 2 ** (layer.bits - 1)).all()):
            return f"int8-dynamic needs symmetric integer weights (zero-point {2 ** (layer.bits - 1)} at {layer.bits} bits)"
        if layer.act is not None and layer.act.bits != 8:
            return f"int8-dynamic quantizes inputs to 8 bits; this layer's are {layer.act.bits}"
        return None
    if backend == "packed-int8":
        if layer.kind != "linear":
            return "packed-int8 runs linear layers only"
        whole = torch.round(layer.zero.float())
        reach = max(float(whole.abs().max()), float((2**layer.bits - 1 - whole).abs().max()))
        if reach > 127:  # 8-bit asymmetric codes minus their zero point span -255..255
            return f"packed-int8 needs code - zero point within int8 (up to 127), this layer's reach {reach:g}"
        if layer.group_size is not None:
            return "packed-int8 needs one scale per row, not groups (one int8 product per layer)"
        if layer.act is not None and layer.act.bits != 8:
            return f"packed-int8 quantizes inputs to 8 bits; this layer's are {layer.act.bits}"
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


def auto_backends(bits: int) -> tuple[str, ...]:
    """The low-bit backends ``auto`` times against the reference for a `bits`-wide layer: int8
    kernels for 8-bit layers; below 8 bits packed weights, on int8 products (``packed-int8``) or
    unpacked to float (``packed``), which keep the memory the bit width saves (``int8-dynamic``
    on 4-bit codes must be asked for)."""
    return ("int8-dynamic", "packed-int8", "packed") if bits == 8 else ("packed-int8", "packed")


def choose(layer: QuantizedLayer, device: torch.device) -> str:
    """The first of `auto_backends` that can run the layer (``packed`` runs any): the form that
    keeps its bit width's memory, unmeasured (``auto`` itself measures, `autotune`)."""
    return next(b for b in auto_backends(layer.bits) if why_not(b, layer, device) is None)


def deploy(model: nn.Module, backend: str = "auto", device: str | torch.device | None = None,
           timer=None) -> nn.Module:
    """A copy of `model` whose quantized layers run on `backend` (``auto`` or one of `BACKENDS`),
    in eval mode on `device` (default: the model's). Every layer is checked before any is built: a
    layer the backend cannot run is a `DeployError` naming it, the reason and the backends that can.
    ``auto`` measures (`autotune.choose_measured`; ``timer`` replaces its timing, for tests) and
    notes in ``deploy_notes`` each layer that kept the reference form because no low-bit form
    was faster."""
    from .quantize import copy_module
    from .upstream import module_device, pick_device

    if backend not in CHOICES:
        raise DeployError(f"unknown backend {backend!r}; known: {', '.join(CHOICES)}")
    target = pick_device(device) if device is not None else module_device(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    if not layers:
        raise DeployError("the model has no quantized layers (quantize it first, or load a packed file)")
    if backend in RUNTIMES:  # -int8: MatMulNBits multiplies 8-bit inputs (ORT's accuracy_level 4)
        from .ort_backend import deploy_onnxruntime

        return deploy_onnxruntime(model, target, int8_inputs=backend == "onnxruntime-int8")
    plan, notes = {}, {}
    if backend == "auto":
        out = copy_module(model).to(target).eval()
        plan, notes = measured_plan({n: out.get_submodule(n) for n in layers}, target, timer=timer)
        return _build(out, plan, notes, backend, target)
    for name, layer in layers.items():
        chosen = choose(layer, target) if backend == "compact" else backend
        reason = why_not(chosen, layer, target)
        if reason:
            able = [b for b in BACKENDS if why_not(b, layer, target) is None]
            raise DeployError(f"backend {chosen} cannot run layer {name!r} ({layer.bits}-bit {layer.kind}, "
                              f"group_size {layer.group_size}) on {target}: {reason}; backends that can: {', '.join(able)}")
        plan[name] = chosen
    return _build(copy_module(model).to(target).eval(), plan, notes, backend, target)


def measured_plan(layers: dict[str, QuantizedLayer], device: torch.device, timer=None, cache=None):
    """``auto``'s plan and notes for ``layers`` on ``device`` (`autotune.choose_measured` over
    the backends of `auto_backends` that can run each layer)."""
    from .autotune import choose_measured

    return choose_measured(layers, device,
                           candidates=lambda layer: [b for b in auto_backends(layer.bits) if why_not(b, layer, device) is None],
                           build=lambda b, layer: _module(b, device)(layer).to(device), timer=timer, cache=cache)


def _build(out: nn.Module, plan: dict[str, str], notes: dict[str, str], backend: str, target: torch.device) -> nn.Module:
    """Swap each layer of ``out`` (a copy) for its planned form."""
    for name, chosen in plan.items():
        if chosen == "reference":
            continue
        try:
            built = _module(chosen, target)(out.get_submodule(name))
        except DeployError as err:  # a kernel that fails its own check on this layer
            if backend == "compact":
                plan[name], built = "packed", PackedLayer(out.get_submodule(name))
            elif backend == "auto":  # never a form slower than, or unchecked against, the reference
                plan[name] = "reference"
                notes[name] = f"reference kept: {chosen} fails its check on this layer ({err})"
                continue
            else:
                raise DeployError(f"backend {chosen} cannot run layer {name!r}: {err}; backends that can: reference, packed") from None
        out.set_submodule(name, built.to(target))
    out.deploy_backends, out.deploy_notes = plan, notes
    return out


def _bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def resident_weight_bytes(model: nn.Module, quantized_only: bool = True) -> int:
    """Bytes of the tensors the model keeps in memory: of its quantized layers only (reference or
    deployed), or of everything (every parameter and buffer, non-persistent ones included)."""
    total, seen = 0, set()
    for m in model.modules():
        if getattr(m, "backend", None) in RUNTIMES:  # an exported model: its graph's bytes
            total += m.resident_bytes() if quantized_only else m.file_bytes
        elif isinstance(m, _Deployed):
            total += m.resident_bytes()
        elif isinstance(m, QuantizedLayer) or not quantized_only:
            for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
                if id(t) not in seen:
                    seen.add(id(t))
                    total += _bytes(t)
    return total

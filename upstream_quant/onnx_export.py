"""A quantized upstream as an ONNX graph that keeps its low-bit weights (ONNX Runtime runs it).

`export_onnx(model, path)` traces `Upstream.forward_one` (one utterance, its length a symbol)
with PyTorch's dynamo exporter and writes every hidden state as an output. Each quantized layer
becomes what ONNX Runtime has a kernel for, with the very codes, scales and zero points we store:

- linear layers: ``com.microsoft.MatMulNBits``, which ORT runs at 2, 4 and 8 bits. A 1-bit layer
  is written as 2-bit codes (0 or 1 with its zero point, 0.5 for binary: exact), 3 bits as 4,
  5-7 bits as 8 (`onnx_bits`). One scale per row becomes the same scale over blocks of the row
  (the kernel has blocks only); groups of 16-256 inputs (a power of two) are its blocks.
- convolutions: their codes as ``DequantizeLinear`` (one scale and integer zero point per
  output channel, one byte a code) feeding ``Conv``.
- every float32 tensor whose values fp16 holds exactly (all of a packed file's: it stores them in
  fp16) is stored in fp16 with a ``Cast`` to float32: ORT folds the cast when it loads the
  model, so the file keeps the packed file's size and the session computes in float32.

What ORT cannot run is refused before any work, naming the layer (`why_not_onnx`). The ops are
ours because no exporter knows our quantized layers: torchao's and ORT's own quantizers
requantize the weights, which would not be the model we measured.
"""
from __future__ import annotations

import functools
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .accounting import stored_bytes, stored_weights
from .accounting import weight_bytes as weight_bytes_of
from .qweight import QuantizedLayer

ORT_BITS = (2, 4, 8)  # MatMulNBits' widths in the pinned onnxruntime
EXTRA_HINT = "pip install 'lowbit-speech-bench[onnx]'"
OPSET = 20


class ExportError(ValueError):
    """A model or layer ONNX Runtime cannot run as exported; names the layer and why."""


def onnx_bits(bits: int) -> int:
    """The MatMulNBits width that holds `bits`-bit codes exactly: the next of 2, 4, 8."""
    return next(b for b in ORT_BITS if b >= bits)


def block_size(layer: QuantizedLayer) -> int:
    """Inputs per MatMulNBits block: the layer's group, or for one scale per row the largest
    power of two up to 256 dividing the row (the scale repeated over the row's blocks)."""
    if layer.group_size:
        return layer.group_size
    k = layer.codes.shape[1]
    return max((b for b in (256, 128, 64, 32, 16) if k % b == 0), default=256)


def why_not_onnx(layer: QuantizedLayer) -> str | None:
    """Why the export cannot write this layer as ORT runs it, or None."""
    if layer.act is not None:
        return f"its inputs are quantized to {layer.act.bits} bits (act_bits), which the export does not write"
    if getattr(layer, "rotation", None) is not None:
        return "its inputs are rotated (rot, incoherence processing), which the export does not write yet"
    zero = layer.zero.detach().float()
    if layer.kind == "conv1d":
        if layer.group_size:
            return "a convolution with groups of inputs (DequantizeLinear takes one scale per output channel)"
        if not bool(((2 * zero) == torch.round(2 * zero)).all()):
            return "a convolution whose zero points are not whole or half (DequantizeLinear takes integer zero points)"
        return None
    if layer.group_size and (layer.group_size < 16 or layer.group_size & (layer.group_size - 1)):
        return f"groups of {layer.group_size} (MatMulNBits blocks are powers of two from 16)"
    return None


# ---------------------------------------------------------------- the ops, as PyTorch sees them

@torch.library.custom_op("lowbit::matmul_nbits", mutates_args=())
def matmul_nbits(x: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 k: int, n: int, bits: int, block: int, accuracy: int = 0) -> torch.Tensor:
    """x @ W^T with W in MatMulNBits' layout (codes packed low bits first, (code - zero) x scale
    per block): what ORT computes at ``accuracy`` 0, in PyTorch, so the layout is tested without
    ORT (the int8 inputs of ``accuracy`` 4 are ORT's alone)."""
    shifts = torch.arange(0, 8, bits, device=b.device, dtype=torch.uint8)
    codes = ((b[..., None] >> shifts) & (2**bits - 1)).reshape(n, -1, block).float()
    blocks = codes.shape[1]
    if zeros is None:
        zeros = torch.full((n, blocks), 2 ** (bits - 1), device=b.device)
    elif zeros.dtype == torch.uint8:
        zeros = ((zeros.reshape(n, -1)[..., None] >> shifts) & (2**bits - 1)).reshape(n, -1)[:, :blocks]
    w = (codes - zeros.float().reshape(n, blocks, 1)) * scales.float().reshape(n, blocks, 1)
    return F.linear(x, w.reshape(n, -1)[:, :k].to(x.dtype))


@matmul_nbits.register_fake
def _(x, b, scales, zeros, k, n, bits, block, accuracy=0):
    return x.new_empty(*x.shape[:-1], n)


@torch.library.custom_op("lowbit::dequantize_linear", mutates_args=())
def dequantize_linear(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """(codes - zero) x scale, one of each per output channel (axis 0): ONNX's DequantizeLinear."""
    shape = (-1,) + (1,) * (codes.dim() - 1)
    return (codes.float() - zeros.float().reshape(shape)) * scales.float().reshape(shape)


@dequantize_linear.register_fake
def _(codes, scales, zeros):
    return codes.new_empty(codes.shape, dtype=torch.float32)


class MatMulNBitsLinear(nn.Module):
    """A quantized linear layer in MatMulNBits' layout (the form the export writes)."""

    def __init__(self, layer: QuantizedLayer, int8_inputs: bool = False):
        super().__init__()
        n, k = layer.codes.shape
        self.accuracy = 4 if int8_inputs else 0
        bits, block = onnx_bits(layer.bits), block_size(layer)
        blocks = math.ceil(k / block)
        codes, scale, zero = layer.codes.detach().cpu().to(torch.uint8), layer.scale.detach().cpu().float(), layer.zero.detach().cpu().float()
        if not layer.group_size:  # one scale per row: the same over each of its blocks
            scale, zero = scale.reshape(n, 1).expand(n, blocks), zero.reshape(n, 1).expand(n, blocks)
        padded = torch.zeros(n, blocks * block, dtype=torch.uint8)
        padded[:, :k] = codes
        self.k, self.n, self.bits, self.block = k, n, bits, block
        self.register_buffer("b", _pack_low_first(padded.reshape(n, blocks, block), bits))
        self.register_buffer("scales", scale.reshape(-1).contiguous())
        if bool((zero == 2 ** (bits - 1)).all()):  # the kernel's default zero point: none stored
            self.register_buffer("zeros", None)
        elif bool((zero == torch.round(zero)).all()):  # whole zero points: packed codes, as the kernel takes them
            cols = math.ceil(blocks * bits / 8)
            z = torch.zeros(n, cols * (8 // bits), dtype=torch.uint8)
            z[:, :blocks] = zero.to(torch.uint8)
            self.register_buffer("zeros", _pack_low_first(z.reshape(n, cols, 8 // bits), bits).reshape(-1))
        else:  # fractional (binary's 0.5): float zero points, same formula
            self.register_buffer("zeros", zero.reshape(-1).contiguous())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().cpu().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.lowbit.matmul_nbits(x, self.b, self.scales, self.zeros, self.k, self.n, self.bits, self.block, self.accuracy)
        return y if self.bias is None else y + self.bias

    def weight_bytes(self) -> int:
        """Bytes the file holds for this layer's weight: codes, fp16 scales, zero points (fp16 when float)."""
        zeros = 0 if self.zeros is None else self.zeros.numel() * (1 if self.zeros.dtype == torch.uint8 else 2)
        return self.b.numel() + self.scales.numel() * 2 + zeros


class DequantizeConv(nn.Module):
    """A quantized convolution as DequantizeLinear (codes one byte each) feeding Conv. Half
    zero points (binary) are written as doubled codes at half the scale: exact."""

    def __init__(self, layer: QuantizedLayer):
        super().__init__()
        codes, scale, zero = layer.codes.detach().cpu(), layer.scale.detach().cpu().float().reshape(-1), layer.zero.detach().cpu().float().reshape(-1)
        if not bool((zero == torch.round(zero)).all()):
            codes, scale, zero = codes.to(torch.int16) * 2, scale / 2, zero * 2
        self.register_buffer("codes", codes.to(torch.uint8))
        self.register_buffer("scales", scale)
        self.register_buffer("zeros", zero.to(torch.uint8))
        self.conv_args = layer.conv_args
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().cpu().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.ops.lowbit.dequantize_linear(self.codes, self.scales, self.zeros)
        return F.conv1d(x, w.to(x.dtype), self.bias, **self.conv_args)

    def weight_bytes(self) -> int:
        return self.codes.numel() + self.scales.numel() * 2 + self.zeros.numel()


def _pack_low_first(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., m * 8/bits) codes -> (..., m) bytes, the first code in the lowest bits (ORT's order;
    our packed file's is the opposite)."""
    per = 8 // bits
    grouped = codes.reshape(*codes.shape[:-1], -1, per).to(torch.int32)
    shifts = torch.arange(0, 8, bits, dtype=torch.int32)
    return (grouped << shifts).sum(-1).to(torch.uint8)


# ---------------------------------------------------------------- the ops, as ONNX writes them

@functools.cache
def _translations() -> dict:
    import onnxscript
    from onnx.defs import OpSchema
    from onnxscript import opset20 as op

    param, attr = OpSchema.FormalParameter, OpSchema.Attribute
    # the contrib op's signature (ORT registers it at run time only; onnx knows nothing of it)
    schema = OpSchema(
        "MatMulNBits", "com.microsoft", 1,
        inputs=[param("A", "T1"), param("B", "T2"), param("scales", "T1"),
                param("zero_points", "T3", param_option=OpSchema.FormalParameterOption.Optional)],
        outputs=[param("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)"], ""), ("T2", ["tensor(uint8)"], ""),
                          ("T3", ["tensor(uint8)", "tensor(float)"], "")],
        attributes=[attr(a, OpSchema.AttrType.INT, "") for a in ("K", "N", "bits", "block_size", "accuracy_level")])
    nbits = onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), "MatMulNBits", schema)

    def matmul(x, b, scales, zeros, k: int, n: int, bits: int, block: int, accuracy: int = 0):
        if zeros is None:
            return nbits(x, b, scales, K=k, N=n, bits=bits, block_size=block, accuracy_level=accuracy)
        return nbits(x, b, scales, zeros, K=k, N=n, bits=bits, block_size=block, accuracy_level=accuracy)

    def dequant(codes, scales, zeros):
        return op.DequantizeLinear(codes, scales, zeros, axis=0)

    return {torch.ops.lowbit.matmul_nbits.default: matmul, torch.ops.lowbit.dequantize_linear.default: dequant}


class _Single(nn.Module):
    """The traced function: one utterance in, every hidden state out."""

    def __init__(self, upstream: nn.Module):
        super().__init__()
        self.upstream = upstream

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.upstream.forward_one(wav))


def require_onnx() -> None:
    """One-line error naming the extra when the export's packages are missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"ONNX export and ONNX Runtime need {', '.join(missing)}: {EXTRA_HINT}")


def export_onnx(model: nn.Module, path: str | Path, int8_inputs: bool = False, store_half: bool = True,
                example_seconds: float = 2.0) -> dict:
    """Write `model` (quantized or full precision) as ONNX at `path`: input ``wav`` (1, samples),
    outputs ``hidden_state_0..`` (1, frames, dim), the length dynamic. Returns a report: layers
    per written form, the quantized layers' weight bytes in the graph and in our packed format,
    the file's bytes and the packed file's (`stored_bytes`). ``int8_inputs``: MatMulNBits quantizes
    its inputs to 8 bits per block and multiplies in int8 (ORT's ``accuracy_level`` 4, its fast
    path at 4 and 8 bits; the outputs change slightly). ``store_half`` False: every float tensor
    in float32 (a plain export, as a user would make of a full-precision model)."""
    import onnx

    require_onnx()
    from .upstream import Upstream

    if getattr(type(model), "forward_one", Upstream.forward_one) is Upstream.forward_one:
        raise ExportError(f"{getattr(model, 'name', type(model).__name__)} has no single-utterance path (forward_one) to export")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    problems = [f"{n} ({m.bits}-bit {m.kind}): {why}" for n, m in layers.items() if (why := why_not_onnx(m))]
    if problems:
        raise ExportError(f"ONNX Runtime cannot run {len(problems)} layer(s) as exported: {problems[0]}"
                          + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    from .quantize import copy_module

    export = copy_module(model).cpu().float().eval()
    forms: dict[str, int] = {}
    layer_bytes = {}
    for name, layer in layers.items():
        built = MatMulNBitsLinear(layer, int8_inputs) if layer.kind == "linear" else DequantizeConv(layer)
        form = _form(layer)
        forms[form] = forms.get(form, 0) + 1
        layer_bytes[name] = built.weight_bytes()
        export.set_submodule(name, built)
    wav = 0.1 * torch.randn(1, int(example_seconds * 16000), generator=torch.Generator().manual_seed(0))
    samples = torch.export.Dim("samples", min=max(_min_samples(model), 2), max=30 * 16000)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the exporter logs what it skips (torchvision's ops) and warns about its own internals: noise
    # to a user, who sees the export's report and its check instead
    quiet, level = logging.getLogger("torch.onnx"), logging.getLogger("torch.onnx").level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_Single(export).eval(), (wav,), dynamo=True, input_names=["wav"],
                                        output_names=[f"hidden_state_{i}" for i in range(model.num_hidden_states)],
                                        dynamic_shapes={"wav": {1: samples}}, opset_version=OPSET,
                                        custom_translation_table=_translations(), verbose=False)
    finally:
        quiet.setLevel(level)
    proto = program.model_proto
    stored_half = _store_half(proto) if store_half else 0
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(proto, str(tmp))
    tmp.replace(path)
    return {"path": str(path), "layers": forms, "layer_bytes": layer_bytes, "quantized_weight_bytes": sum(layer_bytes.values()),
            "stored_weight_bytes": sum(weight_bytes_of(w) for w in stored_weights(model).values()),
            "file_bytes": path.stat().st_size, "stored_bytes": stored_bytes(model), "fp16_tensors": stored_half,
            "num_hidden_states": model.num_hidden_states}


def _form(layer: QuantizedLayer) -> str:
    if layer.kind == "conv1d":
        return "DequantizeLinear+Conv (uint8 codes)"
    bits = onnx_bits(layer.bits)
    return f"MatMulNBits {bits}-bit" + (f" (holding {layer.bits}-bit codes)" if bits != layer.bits else "")


def _min_samples(model: nn.Module) -> int:
    """The shortest utterance the model takes (its CNN's receptive field, Whisper's two hops)."""
    convs = getattr(model, "convs", None)
    if convs:
        need = 1
        for kernel, stride in reversed(convs):
            need = (need - 1) * stride + kernel
        return need
    return int(getattr(model, "downsample_rate", 320))


def _store_half(proto) -> int:
    """Drop initializers no node reads, then store each float32 initializer whose values fp16
    holds exactly (a packed file's tensors, scales and zero points are fp16 already, and so are
    the exporter's folded copies of them) in fp16 behind a Cast to float32: the file keeps the
    packed file's size and the values stay exact. Returns how many were halved."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    for node in graph.node:  # the exporter's per-node stack traces: debugging aids, 10 % of a small model's file
        del node.metadata_props[:]
        node.doc_string = ""
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    casts = []
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        value = numpy_helper.to_array(init)
        half = value.astype(np.float16)
        if value.size < 16 or not np.array_equal(half.astype(np.float32), value):
            continue
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(half, init.name + "__fp16"))
        casts.append(helper.make_node("Cast", [init.name + "__fp16"], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=init.name + "__cast"))
    for i, node in enumerate(casts):
        graph.node.insert(i, node)
    return len(casts)

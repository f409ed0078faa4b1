"""Cost accounting: parameter and MAC inventories read from a module, storage under named
conventions, and estimated runtime from a bit-operation cost model.

Everything here is read from the module (parameter shapes, the ops a forward pass runs), never
typed in per model. Storage conventions:

- `fp16`: every inference parameter at 16 bits.
- `paper`: our reconstruction of the storage rule behind the figures of Yeh et al. (arXiv
  2301.00652) for their quantized HuBERT rows. It is a fit to three published numbers, not a
  rule the paper states: transformer linear weights at b bits plus one 8-bit scale per output
  row (b < 16); CNN and feature-projection weights at 8 bits; positional-conv weights at 16 bits;
  biases, norms and other vectors at 32 bits; pretraining/prediction heads not counted.
  The paper's DistilHuBERT baseline is its published parameter count at 16 bits (`fp16`).
- `stored`: what our packed format writes (see packed.py): b-bit codes, 16-bit scales (and
  zero-points) per output row or group, everything else at 16 bits, parameters the upstream
  never uses at inference (HuBERT's pretraining heads) left out.

Estimated runtime counts bit-operations with full-precision (32-bit) activations: a MAC with
b-bit weights costs b/32 of a full-precision MAC; weights kept in floating point run at full
precision (cost 1), and so do the activation-by-activation attention matmuls (QK^T, AV).
`scope="encoder"` counts only the transformer blocks (the scope that reproduces the paper's
0.12 / 0.15); `scope="full"` counts the whole upstream including the CNN front end.
Runtimes are relative to full-precision HuBERT Base on an utterance of the same length
(default 10 s, 500 frames).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from .io import cache_dir, write_atomic
from .upstream import Upstream

DEFAULT_SECONDS = 10.0
REFERENCE_UPSTREAM = "hubert_base"
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)


@dataclass(frozen=True)
class ParamEntry:
    name: str
    group: str  # cnn, feature_projection, positional_conv, transformer, heads, other
    kind: str  # weight (matrices/kernels), bias, norm, other
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class OpEntry:
    module: str
    group: str
    op: str  # linear, conv, attention
    macs: int
    weight: str | None  # parameter name of the weight this op multiplies by, if any


def under(name: str, prefix: str) -> bool:
    """True when `name` is the module/parameter path `prefix` or lies below it."""
    return name == prefix or name.startswith(prefix + ".")


def under_any(name: str, prefixes: Iterable[str]) -> bool:
    return any(under(name, p) for p in prefixes)


def group_of(name: str, prefixes: Mapping[str, str]) -> str:
    """Accounting group of a parameter or module path: the longest matching prefix wins."""
    best, group = -1, "other"
    for prefix, g in prefixes.items():
        if under(name, prefix) and len(prefix) > best:
            best, group = len(prefix), g
    return group


def param_inventory(upstream: Upstream) -> list[ParamEntry]:
    """Every parameter with its group and kind."""
    owners = {}
    for mname, module in upstream.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            owners[f"{mname}.{pname}" if mname else pname] = module
    entries = []
    for name, param in upstream.named_parameters():
        leaf, owner = name.rsplit(".", 1)[-1], owners[name]
        if isinstance(owner, _NORMS) or leaf == "weight_g":
            kind = "norm"
        elif leaf.endswith("bias"):
            kind = "bias"
        elif param.dim() >= 2:
            kind = "weight"
        else:
            kind = "other"
        entries.append(ParamEntry(name, group_of(name, upstream.group_prefixes), kind, tuple(param.shape)))
    return entries


def inventory_summary(entries: Iterable[ParamEntry]) -> dict[tuple[str, str], int]:
    """Parameter count per (group, kind)."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    for e in entries:
        out[(e.group, e.kind)] += e.numel
    return dict(sorted(out.items()))


# ---------------------------------------------------------------- storage


@dataclass(frozen=True)
class StoragePolicy:
    """Bits per parameter class. `weight_bits` maps a group to the bits of its weight matrices."""

    name: str
    weight_bits: Mapping[str, int] = field(default_factory=dict)
    default_bits: int = 16  # weights of groups not in weight_bits
    vector_bits: int = 16  # biases, norms, other
    scale_bits: int = 0  # per output row (or group) of each weight stored below 16 bits
    group_size: int | None = None  # inputs per scale; None: one scale per output row
    zero_point: bool = False  # a zero-point (at scale_bits) beside each scale
    exclude_groups: tuple[str, ...] = ()
    exclude_params: tuple[str, ...] = ()  # name prefixes not stored

    def bits_for(self, e: ParamEntry) -> int:
        if e.kind == "weight":
            return self.weight_bits.get(e.group, self.default_bits)
        return self.vector_bits

    def excluded(self, e: ParamEntry) -> bool:
        return e.group in self.exclude_groups or under_any(e.name, self.exclude_params)


def scale_count(shape: tuple[int, ...], group_size: int | None) -> int:
    """Scales of one weight: one per output row, or per row and group of `group_size` inputs."""
    rows, cols = shape[0], math.prod(shape[1:])
    return rows if group_size is None else rows * math.ceil(cols / group_size)


def storage_bytes(entries: Iterable[ParamEntry], policy: StoragePolicy) -> dict[str, float]:
    """Bytes per group under `policy`, plus 'total'; weights below 16 bits as `weight_bytes`
    (the one rule for quantized weights, also used for models as they are)."""
    out: dict[str, float] = defaultdict(float)
    for e in entries:
        if policy.excluded(e):
            continue
        bits = policy.bits_for(e)
        if e.kind == "weight" and bits < 16:
            out[e.group] += weight_bytes(StoredWeight(e.shape, bits, policy.group_size, policy.zero_point), policy.scale_bits)
        else:
            out[e.group] += e.numel * bits / 8
    out["total"] = sum(out.values())
    return dict(out)


def fp16_policy() -> StoragePolicy:
    return StoragePolicy("fp16", exclude_groups=("heads",))


def paper_policy(bits: int) -> StoragePolicy:
    """Our reconstruction of the paper's rule for its quantized HuBERT rows (module docstring)."""
    return StoragePolicy(
        "paper",
        weight_bits={"transformer": bits, "cnn": 8, "feature_projection": 8},
        default_bits=16,
        vector_bits=32,
        scale_bits=8 if bits < 16 else 0,
        exclude_groups=("heads",),
    )


def stored_policy(
    bits: int,
    groups: tuple[str, ...] = ("transformer",),
    group_size: int | None = None,
    zero_point: bool = False,
    unused: tuple[str, ...] = (),
) -> StoragePolicy:
    """What the packed format writes for `groups` quantized to `bits` (16: nothing quantized)."""
    return StoragePolicy(
        "stored",
        weight_bits={g: bits for g in groups},
        scale_bits=16 if bits < 16 else 0,
        group_size=group_size,
        zero_point=zero_point,
        exclude_params=unused,
    )


def megabytes(nbytes: float) -> float:
    """Decimal megabytes, the paper's unit (46.98 MB = 23.49 M parameters x 2 bytes / 1e6)."""
    return nbytes / 1e6


# ---------------------------------------------------------------- MACs


def mac_inventory(upstream: Upstream, seconds: float = DEFAULT_SECONDS) -> list[OpEntry]:
    """MACs of every weight op (Linear, Conv1d) and attention matmul in one forward pass over a
    single utterance of `seconds`, recorded by hooks during that pass.

    The pass runs on the meta device when the model's code allows it (shapes only, no
    arithmetic), else on a CPU copy with zeros.
    """
    samples = int(round(seconds * upstream.sample_rate))
    ops: list[OpEntry] = []
    names = {m: n for n, m in upstream.named_modules()}

    def weight_hook(module, args, output):
        name = names[module]
        w = module.weight
        if isinstance(module, nn.Linear):
            macs = output.numel() // output.shape[-1] * w.shape[0] * w.shape[1]
            op = "linear"
        else:  # Conv1d: every output position multiplies in_channels/groups x kernel inputs
            macs = output.numel() * w.shape[1] * w.shape[2]
            op = "conv"
        wname = f"{name}.weight" if "weight" in dict(module.named_parameters(recurse=False)) else f"{name}.weight_v"
        ops.append(OpEntry(name, group_of(name, upstream.group_prefixes), op, int(macs), wname))

    def attention_hook(module, args, kwargs, output):
        # QK^T and AV: each (T x d) by (d x T') per batch item, summed over heads.
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs.get("key")
        key = query if key is None else key
        if getattr(module, "batch_first", False):
            batch, tq, dim = query.shape
            tk = key.shape[1]
        else:  # fairseq's time-first layout
            tq, batch, dim = query.shape
            tk = key.shape[0]
        name = names[module]
        ops.append(OpEntry(name, group_of(name, upstream.group_prefixes), "attention", 2 * batch * tq * tk * dim, None))

    def run(model: Upstream, device: str) -> None:
        handles = []
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                handles.append(module.register_forward_hook(weight_hook))
            elif hasattr(module, "q_proj") and hasattr(module, "k_proj"):
                handles.append(module.register_forward_hook(attention_hook, with_kwargs=True))
        try:
            with torch.no_grad():
                model(torch.zeros(1, samples, device=device), torch.tensor([samples], device=device))
        finally:
            for h in handles:
                h.remove()

    was_training = upstream.training
    upstream.eval()
    first = next(itertools.chain(upstream.parameters(), upstream.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    try:
        run(upstream, device.type)
    except (RuntimeError, NotImplementedError):
        if device.type != "meta":
            raise
        ops.clear()  # the model's code needs real values: redo on a CPU copy
        cpu = upstream.to_empty(device="cpu")
        names = {m: n for n, m in cpu.named_modules()}
        run(cpu, "cpu")
    upstream.train(was_training)
    return ops


def op_cost(op: OpEntry, weight_bits: Mapping[str, int]) -> float:
    """Full-precision-MAC equivalents of one op: b-bit weights cost b/32, the rest cost 1."""
    bits = weight_bits.get(op.weight, 32) if op.weight else 32
    return op.macs * min(bits, 32) / 32


def estimated_cost(ops: Iterable[OpEntry], weight_bits: Mapping[str, int], scope: str = "encoder") -> float:
    """Summed cost of `ops` in `scope` ('encoder': transformer blocks only; 'full': everything)."""
    if scope not in ("encoder", "full"):
        raise ValueError(f"scope must be 'encoder' or 'full', got {scope!r}")
    return sum(op_cost(op, weight_bits) for op in ops if scope == "full" or op.group == "transformer")


def quantized_weight_bits(entries: Iterable[ParamEntry], bits: int, groups: tuple[str, ...] = ("transformer",)) -> dict[str, int]:
    """Weight name -> bits for a uniform policy: weights of `groups` at `bits` (>= 16 means unquantized)."""
    if bits >= 16:
        return {}
    return {e.name: bits for e in entries if e.kind == "weight" and e.group in groups}


# ---------------------------------------------------------------- reports


def shape_model(name: str) -> Upstream:
    """Architecture of upstream `name` for accounting: built on the meta device (no weights)
    when its code allows it, else randomly initialised on the CPU."""
    from .upstreams import get_upstream

    build = get_upstream(name).build_random
    try:
        with torch.device("meta"):
            model = build(name)
        return model.to("meta").eval()  # some s3prl tensors are created on the CPU regardless
    except (RuntimeError, NotImplementedError):
        torch.manual_seed(0)
        return build(name).eval()


def shape_of(architecture: dict, name: str) -> Upstream:
    """The full-precision architecture an ``architecture()`` dict describes, for accounting
    (meta device when its code allows it, else random weights on the CPU)."""
    from .upstreams import build_architecture

    try:
        with torch.device("meta"):
            model = build_architecture(architecture, name)
        return model.to("meta").eval()
    except (RuntimeError, NotImplementedError):
        return build_architecture(architecture, name).eval()


_REFERENCE_COST: dict[tuple[float, str], float] = {}


def reference_cost(seconds: float = DEFAULT_SECONDS, scope: str = "encoder") -> float:
    """Cost of full-precision HuBERT Base, the denominator of every estimated runtime."""
    key = (seconds, scope)
    if key not in _REFERENCE_COST:
        _REFERENCE_COST[key] = estimated_cost(inventories(REFERENCE_UPSTREAM, seconds)[1], {}, scope)
    return _REFERENCE_COST[key]


@dataclass
class CostReport:
    upstream: str
    bits: int
    seconds: float
    inventory: dict[tuple[str, str], int]
    storage_mb: dict[str, float]  # convention -> MB
    est_runtime: dict[str, float]  # scope -> ratio to full-precision HuBERT Base
    macs: dict[str, int]  # op kind -> MACs

    def as_dict(self) -> dict:
        return {
            "upstream": self.upstream,
            "bits": self.bits,
            "seconds": self.seconds,
            "parameters": {f"{g}/{k}": n for (g, k), n in self.inventory.items()},
            "parameters_total": sum(self.inventory.values()),
            "storage_mb": self.storage_mb,
            "est_runtime": self.est_runtime,
            "macs": self.macs,
        }


def _cache_file(key: str, seconds: float, source: bytes) -> Path:
    """Inventories depend only on the architecture's code and the utterance length: key on both.
    ``source``: the code of the upstream's family module (upstreams.defining_source); this
    module, which counts, and the base class are hashed with it."""
    import s3prl

    digest = hashlib.sha256(source)
    for module in (Path(__file__), Path(__file__).parent / "upstream.py"):
        digest.update(module.read_bytes())
    digest.update(f"{torch.__version__}|{s3prl.__version__}|{key}|{seconds}".encode())
    return cache_dir("accounting") / f"{key[:40]}-{digest.hexdigest()[:16]}.json"


def inventories(name: str, seconds: float = DEFAULT_SECONDS, architecture: dict | None = None,
                ) -> tuple[list[ParamEntry], list[OpEntry], tuple[str, ...]]:
    """Parameter and MAC inventories of upstream `name` (and its unused-at-inference prefixes):
    of its registry architecture, or of `architecture` (an ``Upstream.architecture()`` dict, e.g.
    of a checkpoint with another configuration).

    Computed from the module once per architecture and length, then read from a JSON cache
    (BENCH_CACHE, default ~/.cache/lowbit-bench): building the model and the forward pass cost
    seconds, mostly importing torch's compiler stack for the meta device.
    """
    from .upstreams import FAMILIES, defining_source, get_upstream

    get_upstream(name)  # unknown names fail here, before any work
    if architecture is not None and architecture.get("family") not in FAMILIES:
        raise ValueError(f"unknown architecture family {architecture.get('family')!r}; known: {', '.join(sorted(FAMILIES))}")
    source = defining_source(name) if architecture is None else defining_source(family=architecture["family"])
    key = name if architecture is None else f"{name}-" + hashlib.sha256(
        json.dumps(architecture, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = _cache_file(key, seconds, source)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            return (
                [ParamEntry(e["name"], e["group"], e["kind"], tuple(e["shape"])) for e in data["params"]],
                [OpEntry(**o) for o in data["ops"]],
                tuple(data["unused"]),
            )
        except (ValueError, KeyError, TypeError):
            pass  # unreadable cache: recompute below
    model = shape_model(name) if architecture is None else shape_of(architecture, name)
    entries, ops = param_inventory(model), mac_inventory(model, seconds)
    unused = tuple(getattr(model, "unused_at_inference", ()))
    data = {"params": [asdict(e) for e in entries], "ops": [asdict(o) for o in ops], "unused": list(unused)}
    try:
        write_atomic(path, json.dumps(data))
    except OSError:
        pass  # a read-only home only costs speed
    return entries, ops, unused


def cost_report(
    upstream: Upstream | str,
    bits: int = 16,
    seconds: float = DEFAULT_SECONDS,
    groups: tuple[str, ...] = ("transformer",),
    group_size: int | None = None,
    zero_point: bool = False,
) -> CostReport:
    """Inventory, storage under every convention and estimated runtime of `upstream` (a module,
    or a registry name: its architecture) with the weights of `groups` at `bits` (16 = unquantized);
    ``group_size`` and ``zero_point`` say how the packed file stores the scales ("stored" MB)."""
    if isinstance(upstream, str):
        name = upstream
        entries, ops, unused = inventories(name, seconds)
    else:
        name = upstream.name
        entries, ops = param_inventory(upstream), mac_inventory(upstream, seconds)
        unused = tuple(getattr(upstream, "unused_at_inference", ()))
    wbits = quantized_weight_bits(entries, bits, groups)
    if name == REFERENCE_UPSTREAM:  # its own full-precision cost is the reference: no second pass
        for scope in ("encoder", "full"):
            _REFERENCE_COST.setdefault((seconds, scope), estimated_cost(ops, {}, scope))
    storage = {
        "fp16": megabytes(storage_bytes(entries, fp16_policy())["total"]),
        "paper": megabytes(storage_bytes(entries, paper_policy(bits))["total"]),
        "stored": megabytes(storage_bytes(entries, stored_policy(bits, groups, group_size, zero_point, unused=unused))["total"]),
    }
    runtime = {
        scope: estimated_cost(ops, wbits, scope) / reference_cost(seconds, scope) for scope in ("encoder", "full")
    }
    macs: dict[str, int] = defaultdict(int)
    for op in ops:
        macs[op.op] += op.macs
    return CostReport(name, bits, seconds, inventory_summary(entries), storage, runtime, dict(macs))


# ---------------------------------------------------------------- cost of a model as it is


@dataclass(frozen=True)
class StoredWeight:
    """How one quantized weight is stored: what `save_packed` writes for it."""

    shape: tuple[int, ...]
    bits: int
    group_size: int | None
    zero_stored: bool  # zero-points written (not constant over the layer, e.g. asymmetric codes)
    act_bits: int | None = None
    rotated: bool = False  # inputs rotated at run time (upstream_quant.rotation): a seed, no bytes

    @property
    def scales(self) -> int:
        return scale_count(self.shape, self.group_size)


def weight_bytes(weight: StoredWeight, scale_bits: int = 16) -> float:
    """Bytes of one quantized weight: bit-packed codes (whole bytes, as packed files hold them),
    one scale per row or group, and zero-points when stored. ``scale_bits=16`` is our packed
    format; the paper's convention counts 8-bit scales."""
    codes = math.ceil(math.prod(weight.shape) * weight.bits / 8)
    return codes + weight.scales * scale_bits / 8 * (2 if weight.zero_stored else 1)


def stored_weights(model: nn.Module) -> dict[str, StoredWeight]:
    """Module path -> how it is stored, for every quantized layer of `model`."""
    from .qweight import QuantizedLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLayer):
            zero = module.zero.detach().flatten()
            out[name] = StoredWeight(tuple(module.codes.shape), int(module.bits), module.group_size,
                                     bool(zero.numel() and not (zero == zero[0]).all()),
                                     module.act.bits if module.act is not None else None, module.rotation is not None)
    return out


def _layer_of(name: str, layers: Mapping[str, object]) -> str | None:
    owner = name.rsplit(".", 1)[0] if "." in name else ""
    return owner if owner in layers else None


def stored_bytes(model: nn.Module) -> float:
    """Bytes of tensors in `model`'s packed file (`save_packed`): quantized layers as
    `weight_bytes`, every other state-dict tensor at 16 bits (integers at their own width),
    parameters unused at inference left out. The file adds only its JSON header."""
    layers = stored_weights(model)
    unused = tuple(getattr(model, "unused_at_inference", ()))
    total = sum(weight_bytes(w) for w in layers.values())
    for name, t in model.state_dict().items():
        layer = _layer_of(name, layers)
        if (layer is not None and name.rsplit(".", 1)[1] in ("codes", "scale", "zero")) or under_any(name, unused):
            continue
        total += t.numel() * (2 if t.is_floating_point() else t.element_size())
    return total


@dataclass
class ModelCost:
    """Storage and estimated runtime of a model as it is (each quantized layer's own bits,
    groups, zero-points and activation bits), for results rows."""

    storage_mb: dict[str, float]  # stored (our packed file), paper (its convention), fp16
    est_runtime: dict[str, float]  # encoder / full, relative to full-precision HuBERT Base
    bit_map: dict[str, int]  # quantized layer -> weight bits
    act_bits: dict[str, int]  # quantized layer -> activation bits, where quantized

    def as_row(self) -> dict:
        return {"storage_mb": round(self.storage_mb["paper"], 3), "stored_mb": round(self.storage_mb["stored"], 3),
                "fp16_mb": round(self.storage_mb["fp16"], 3), "est_runtime": round(self.est_runtime["encoder"], 4),
                "est_runtime_full": round(self.est_runtime["full"], 4), "bit_map": self.bit_map,
                "bit_widths": sorted(set(self.bit_map.values()))}


def model_cost(model: nn.Module, seconds: float = DEFAULT_SECONDS) -> ModelCost:
    """Cost of `model` read from its modules: which layers are quantized and how.

    The MACs come from the full-precision architecture the model was built from
    (``model.architecture()``), so a checkpoint with a non-default configuration is costed as
    what it is. Paper convention per weight: quantized layers at their bits plus an 8-bit scale
    (and zero-point, when stored) per row or group; the rest as `paper_policy` (a uniformly
    quantized model costs what `cost_report` gives its bit width: tested). Runtime: a
    MAC with b-bit weights and a-bit activations costs (b / 32) x (a / 32) of a full-precision one;
    a rotated layer adds its input rotation's additions (`rotation.rotation_ops` per input
    element) at full precision.
    """
    from .rotation import rotation_ops

    layers = stored_weights(model)
    name = getattr(model, "name", None)
    arch = model.architecture() if hasattr(model, "architecture") else None
    if name is None or arch is None:
        raise TypeError("model_cost needs an upstream from load_upstream (name and architecture())")
    entries, ops, _ = inventories(name, seconds, architecture=arch)
    # the paper rule as cost_report applies it: a quantized model's 8-bit CNN and projection
    # weights carry an 8-bit scale per row too (paper_policy(b < 16)); a full-precision one's do not
    fp16, paper = fp16_policy(), dataclasses.replace(paper_policy(16), scale_bits=8 if layers else 0)
    rest = [e for e in entries if not (_layer_of(e.name, layers) is not None and e.kind in ("weight", "norm")
                                       and e.name.rsplit(".", 1)[1] in ("weight", "weight_v", "weight_g"))]
    mb = {"fp16": storage_bytes(rest, fp16)["total"] + sum(math.prod(w.shape) * 2 for w in layers.values()),
          "paper": storage_bytes(rest, paper)["total"] + sum(weight_bytes(w, scale_bits=8) for w in layers.values())}
    storage = {"stored": megabytes(stored_bytes(model)), "paper": megabytes(mb["paper"]), "fp16": megabytes(mb["fp16"])}

    def cost(op: OpEntry) -> float:
        w = layers.get(op.module)
        if w is None:
            return op.macs
        out = op.macs * min(w.bits, 32) / 32 * min(w.act_bits or 32, 32) / 32
        if w.rotated:  # the input rotation's full-precision additions, counted as MACs: per input element
            out += op.macs / w.shape[0] * rotation_ops(w.shape[1])
        return out

    runtime = {scope: sum(cost(op) for op in ops if scope == "full" or op.group == "transformer")
               / reference_cost(seconds, scope) for scope in ("encoder", "full")}
    return ModelCost(storage, runtime, {n: w.bits for n, w in layers.items()},
                     {n: w.act_bits for n, w in layers.items() if w.act_bits})

"""Label-free, personalised mixed precision to a memory budget (myQASR, Fish et al. 2023).

1. Sensitivity: run a few unlabelled utterances of the target user or group through the
   full-precision model and summarise each quantizable layer's output (default: the median of
   |output| over all elements).
2. Allocation ("uniformity constraint"): every layer starts at ``max_bits``; layers are visited in
   descending order of sensitivity, round-robin, each visit lowering one layer by one bit, until
   the model fits the budget. All layers end at one of two adjacent widths, the most sensitive
   (largest activations) dropping first, as myQASR's code does. Ascending and shuffled orders are
   the ablation baselines.
3. Quantization: symmetric uniform weights per output row with min-max or cosine-searched scales
   (``UniformConfig``; the cosine search covers the linears, convolutions keep min-max), optionally
   8-bit activations, through ``quantize`` like any other method.

``rounding="gptq"`` (suite option ``gptq``) is the variant for widths near 2 bits, where
round-to-nearest collapses: the score of a layer is the output error GPTQ leaves at the lowest
width, relative to the layer's output energy (tr(dW H dW^T) / tr(W H W^T), H = X^T X of its
calibration inputs), the layers with the least error are lowered first, and the allocated widths
are rounded by sequential GPTQ (groups and zero-points as given). The budget may be an average
width over the allocated weights (``budget_bits``) instead of MB.

Size convention: ``stored`` by default, the bytes of our packed file (b-bit codes, one fp16 scale
per row, every other parameter fp16), in decimal MB. ``myqasr`` reproduces the reference code's
count: sum(params x bits) / 8 / 2^20 (MiB), unquantized parameters at 32 bits, scales not counted.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..accounting import StoredWeight, stored_bytes, under_any, weight_bytes
from ..calibration import check_calibration, removing, run_calibration
from ..quantize import effective_weight, target_layers
from .uniform import UniformConfig, quantize_uniform
from . import MethodSpec, register

STATISTICS = ("median", "mean", "max", "l1", "l2")
ORDERS = ("descending", "ascending", "shuffled")
CONVENTIONS = ("stored", "myqasr")
ROUNDINGS = ("uniform", "gptq")
# Elements kept per layer for the median: exact below this, a uniform random sample above it
# (HuBERT's CNN outputs are tens of millions of values per utterance).
MEDIAN_SAMPLE = 2_000_000


class BudgetError(ValueError):
    """A budget outside what the allocation can reach; the message states the feasible range."""


# ---------------------------------------------------------------- sensitivity

def sensitivity(upstream: nn.Module, wavs: Sequence[torch.Tensor], layers: dict[str, nn.Module],
                statistic: str = "median", probe_bits: int = 4, seed: int = 0) -> dict[str, float]:
    """Per-layer score from unlabelled audio. ``median``/``mean``/``max`` of |output|; ``l1``/``l2``:
    mean distance between the layer's full-precision output and its output with weights at
    ``probe_bits`` (min-max), on the same inputs."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    check_calibration(list(wavs))
    gen = torch.Generator().manual_seed(seed)
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    sums: dict[str, list[float]] = {n: [0.0, 0.0, 0.0] for n in layers}  # total, count, max
    probes = {}
    if statistic in ("l1", "l2"):
        for name, layer in layers.items():
            q = quantize_uniform(effective_weight(layer), UniformConfig(bits=probe_bits)).dequantize()
            probes[name] = q.reshape(effective_weight(layer).shape)

    def hook(name):
        def fn(module, args, output):
            out = output.detach().float()
            if statistic in ("l1", "l2"):
                x = args[0].detach().float()
                if isinstance(module, nn.Linear):
                    q_out = nn.functional.linear(x, probes[name], module.bias)
                else:
                    q_out = module._conv_forward(x, probes[name], module.bias)
                diff = (out - q_out).abs()
                value = diff if statistic == "l1" else diff.pow(2)
                sums[name][0] += float(value.sum())
                sums[name][1] += value.numel()
                return
            flat = out.abs().flatten()
            sums[name][0] += float(flat.sum())
            sums[name][1] += flat.numel()
            sums[name][2] = max(sums[name][2], float(flat.max()))
            if statistic == "median":
                keep = max(1, MEDIAN_SAMPLE // max(len(wavs), 1))
                if flat.numel() > keep:
                    flat = flat[torch.randint(flat.numel(), (keep,), generator=gen)]
                samples[name].append(flat.cpu())
        return fn

    was_training = upstream.training
    upstream.eval()
    try:  # waveforms run one at a time: no padding enters the statistics
        with removing([layer.register_forward_hook(hook(name)) for name, layer in layers.items()]):
            run_calibration(upstream, list(wavs))
    finally:
        upstream.train(was_training)
    if statistic == "median":
        return {n: float(torch.cat(s).median()) for n, s in samples.items()}
    if statistic == "max":
        return {n: v[2] for n, v in sums.items()}
    if statistic == "l2":
        return {n: math.sqrt(v[0] / v[1]) for n, v in sums.items()}
    return {n: v[0] / v[1] for n, v in sums.items()}


def gptq_sensitivity(upstream: nn.Module, wavs: Sequence[torch.Tensor], layers: dict[str, nn.Module], bits: int,
                     group_size: int | None = None, symmetric: bool = True, rotate: bool = False) -> dict[str, float]:
    """Per linear layer, the output error GPTQ leaves at ``bits`` relative to the layer's output
    energy on ``wavs``: tr(dW H dW^T) / tr(W H W^T), H = X^T X (one pass, full-precision inputs).
    Convolutions (no GPTQ) get the min-max rounding's relative weight error. ``rotate``: each
    linear's error in its rotated input basis, as `quantize` rounds it (upstream_quant.rotation)."""
    from ..calibration import collect_stats
    from ..quantize import rotated_layer
    from .gptq import GPTQConfig, gptq

    check_calibration(list(wavs))
    was_training = upstream.training
    upstream.eval()
    try:
        stats = collect_stats(upstream, layers, list(wavs), need_hessian=True, need_sample=False)
    finally:
        upstream.train(was_training)
    config = GPTQConfig(bits=bits, group_size=group_size, symmetric=symmetric)
    scores = {}
    for name, layer in layers.items():
        w = effective_weight(layer).detach().float()
        if name not in stats:
            q = quantize_uniform(w, UniformConfig(bits=bits)).dequantize().reshape(w.shape)
            scores[name] = float((w - q).pow(2).sum() / w.pow(2).sum().clamp_min(1e-12))
            continue
        layer_stats = stats[name]
        if rotate:
            w, layer_stats, _ = rotated_layer(name, w, layer_stats)
        h = layer_stats.hessian.float()
        dw = w - gptq(w, layer_stats, config)[0].dequantize().reshape(w.shape)
        scores[name] = float(((dw @ h) * dw).sum() / ((w @ h) * w).sum().clamp_min(1e-12))
    return scores


def budget_for_bits(sizes: "SizeModel", average_bits: float) -> float:
    """The budget in MB (the size model's convention) that gives the allocated layers
    ``average_bits`` per weight on average: the size is linear in each layer's bits."""
    if not math.isfinite(average_bits) or average_bits <= 0:
        raise BudgetError(f"an average width must be a positive number of bits, got {average_bits!r}")
    low = math.floor(average_bits)
    lo, hi = sizes.total_mb({n: low for n in sizes.layers}), sizes.total_mb({n: low + 1 for n in sizes.layers})
    return lo + (average_bits - low) * (hi - lo)


# ---------------------------------------------------------------- sizes

@dataclass(frozen=True)
class SizeModel:
    """Bytes of a model as a function of the bits of each quantizable layer."""

    fixed_bytes: float  # everything not in the allocation
    layers: dict[str, tuple[int, int]]  # name -> (weights, rows)
    convention: str = "stored"

    def layer_bytes(self, name: str, bits: int) -> float:
        weights, rows = self.layers[name]
        if self.convention == "myqasr":
            return weights * bits / 8
        return weight_bytes(StoredWeight((rows, weights // rows), bits, None, False))

    def total_mb(self, bits: dict[str, int]) -> float:
        total = self.fixed_bytes + sum(self.layer_bytes(n, b) for n, b in bits.items())
        return total / (2**20 if self.convention == "myqasr" else 1e6)


def size_model(upstream: nn.Module, layers: dict[str, nn.Module], convention: str = "stored") -> SizeModel:
    """``stored``: what `save_packed` writes (accounting's `stored_bytes`, the one implementation of
    that convention) with the allocated layers taken out; ``myqasr``: the reference code's count."""
    if convention not in CONVENTIONS:
        raise ValueError(f"size convention must be one of {CONVENTIONS}, got {convention!r}")
    target = {f"{n}.{p}" for n in layers for p in ("weight", "weight_v", "weight_g")}
    state = upstream.state_dict()
    if convention == "stored":
        fixed = stored_bytes(upstream) - sum(2 * t.numel() for n, t in state.items() if n in target)
    else:
        unused = tuple(getattr(upstream, "unused_at_inference", ()))
        params = {n for n, _ in upstream.named_parameters()}
        fixed = sum(t.numel() * 4 for n, t in state.items()
                    if n in params and n not in target and not under_any(n, unused) and t.is_floating_point())
    info = {}
    for name, layer in layers.items():
        w = effective_weight(layer)
        info[name] = (w.numel(), w.shape[0])
    return SizeModel(fixed, info, convention)


# ---------------------------------------------------------------- allocation

def allocate_bits(scores: dict[str, float], sizes: SizeModel, budget_mb: float, order: str = "descending",
                  min_bits: int = 2, max_bits: int = 8, seed: int = 0) -> dict[str, int]:
    """myQASR's uniformity constraint: lower one layer by one bit at a time, visiting layers in
    ``order`` of their scores, round-robin, until the model fits ``budget_mb``."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if not math.isfinite(budget_mb) or budget_mb <= 0:
        raise BudgetError(f"budget must be a positive number of MB, got {budget_mb!r}")
    names = sorted(scores, key=lambda n: (-scores[n], n))
    if order == "ascending":
        names = names[::-1]
    elif order == "shuffled":
        random.Random(seed).shuffle(names)
    lowest = sizes.total_mb({n: min_bits for n in names})
    highest = sizes.total_mb({n: max_bits for n in names})
    if budget_mb < lowest:
        raise BudgetError(f"budget {budget_mb:g} MB is below the smallest reachable size {lowest:.3f} MB "
                          f"(every layer at {min_bits} bits); feasible range {lowest:.3f} .. {highest:.3f} MB")
    if budget_mb >= highest:
        raise BudgetError(f"budget {budget_mb:g} MB needs no mixed precision: every layer at {max_bits} bits is "
                          f"{highest:.3f} MB; feasible range {lowest:.3f} .. {highest:.3f} MB")
    bits = {n: max_bits for n in names}
    total_bytes = sizes.total_mb(bits)
    scale = 2**20 if sizes.convention == "myqasr" else 1e6
    i = 0
    while total_bytes > budget_mb:
        name = names[i % len(names)]
        if bits[name] > min_bits:
            total_bytes -= (sizes.layer_bytes(name, bits[name]) - sizes.layer_bytes(name, bits[name] - 1)) / scale
            bits[name] -= 1
        i += 1
    return bits


# ---------------------------------------------------------------- quantization method

@dataclass(frozen=True)
class MixedPrecisionConfig:
    """Per-layer bit widths (name -> bits) applied with symmetric uniform quantization.

    A method like the others: ``quantize(model, MixedPrecisionConfig(bit_map=...))``."""

    bit_map: tuple[tuple[str, int], ...]
    clip: str = "minmax"
    act_bits: int | None = None
    targets: tuple[str, ...] = ("*",)
    rounding: str = "uniform"  # or "gptq": sequential GPTQ at each layer's width
    group_size: int | None = None  # GPTQ rounding only
    symmetric: bool = True  # GPTQ rounding only
    rotate: bool = False  # GPTQ rounding only: rotated inputs (upstream_quant.rotation)

    def __post_init__(self):
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"mixed precision rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.rounding == "uniform" and (self.group_size is not None or not self.symmetric or self.rotate):
            raise ValueError("groups, zero-points and rotations are for GPTQ rounding (rounding='gptq')")

    @property
    def layers(self) -> dict[str, int]:
        return dict(self.bit_map)

    @property
    def needs_calibration(self) -> bool:
        return self.clip in ("cosine", "hessian") or self.rounding == "gptq"

    @property
    def sequential(self) -> bool:  # GPTQ rounding: layers in execution order, as GPTQConfig
        return self.rounding == "gptq"

    @property
    def needs_hessian(self) -> bool:
        return self.rounding == "gptq"

    def per_layer(self, name: str, layer: nn.Module):
        """The cosine and Hessian scale searches and GPTQ need the layer's inputs, which are kept
        for linears only; convolutions keep min-max scales."""
        if not isinstance(layer, nn.Linear):
            return UniformConfig(bits=self.layers[name], act_bits=self.act_bits)
        if self.rounding == "gptq":
            from .gptq import GPTQConfig

            return GPTQConfig(bits=self.layers[name], group_size=self.group_size, symmetric=self.symmetric,
                              act_bits=self.act_bits, rotate=self.rotate)
        return UniformConfig(bits=self.layers[name], clip=self.clip, act_bits=self.act_bits)


def coverage(upstream: nn.Module, which: str = "myqasr") -> dict[str, nn.Module]:
    """Quantizable layers: ``myqasr`` (CNN convs, feature projection, attention and feed-forward
    linears; not the positional conv) or ``transformer`` (the transformer's linears only)."""
    if which == "transformer":
        return target_layers(upstream, ("transformer",))
    if which == "myqasr":
        return target_layers(upstream, ("cnn", "feature_projection", "transformer"))
    raise ValueError(f"layer coverage must be 'myqasr' or 'transformer', got {which!r}")


def mixed_precision(upstream: nn.Module, wavs: Sequence[torch.Tensor], budget_mb: float | None, statistic: str = "median",
                    order: str = "descending", clip: str = "minmax", act_bits: int | None = None,
                    layer_coverage: str = "myqasr", convention: str = "stored", min_bits: int = 2, max_bits: int = 8,
                    seed: int = 0, progress: bool = False, rounding: str = "uniform", group_size: int | None = None,
                    symmetric: bool = True, budget_bits: float | None = None, rotate: bool = False) -> tuple[nn.Module, dict]:
    """The whole method: sensitivity on ``wavs``, allocation to ``budget_mb`` (or to an average of
    ``budget_bits`` over the allocated weights), quantization. ``rounding="gptq"``: the GPTQ-error
    score (``statistic`` and ``order`` are then that score, ascending) and GPTQ at each width.
    Returns the quantized copy and a report (scores, bit map, sizes)."""
    from ..quantize import quantize

    if not wavs:
        raise ValueError("mixed precision needs calibration audio: the calibration set is empty")
    if (budget_mb is None) == (budget_bits is None):
        raise BudgetError("give one budget: budget_mb (a size) or budget_bits (an average width)")
    config = MixedPrecisionConfig(bit_map=(), clip=clip, act_bits=act_bits, rounding=rounding, group_size=group_size,
                                  symmetric=symmetric, rotate=rotate)  # checks the arguments before any work
    layers = coverage(upstream, layer_coverage)
    sizes = size_model(upstream, layers, convention)
    if budget_bits is not None:
        if not min_bits <= budget_bits < max_bits:
            raise BudgetError(f"an average of {budget_bits:g} bits is outside the widths allocated, {min_bits}..{max_bits} "
                              f"(at {max_bits} every layer is at the widest: no mixed precision)")
        budget_mb = budget_for_bits(sizes, budget_bits)
    if rounding == "gptq":
        statistic, order = "gptq", "ascending"
        scores = gptq_sensitivity(upstream, wavs, layers, min_bits, group_size, symmetric, rotate)
    else:
        scores = sensitivity(upstream, wavs, layers, statistic, seed=seed)
    bits = allocate_bits(scores, sizes, budget_mb, order, min_bits, max_bits, seed)
    config = dataclasses.replace(config, bit_map=tuple(bits.items()))
    model = quantize(upstream, config, calibration=list(wavs) if config.needs_calibration else None, progress=progress)
    weights = sum(sizes.layers[n][0] for n in bits)
    report = {
        "budget_mb": round(budget_mb, 6), "budget_bits": budget_bits, "rounding": rounding,
        "average_bits": round(sum(sizes.layers[n][0] * b for n, b in bits.items()) / weights, 4),
        "convention": convention, "size_mb": round(sizes.total_mb(bits), 4),
        "statistic": statistic, "order": order, "clip": clip, "act_bits": act_bits, "coverage": layer_coverage,
        "calibration_utterances": len(wavs), "widths": sorted(set(bits.values())),
        "layers": [{"name": n, "score": scores[n], "bits": bits[n], "weights": sizes.layers[n][0]} for n in scores],
    }
    return model, report


def plot_bit_map(report: dict, path) -> None:
    """Bits per layer (bars) and the sensitivity score (line), in the model's layer order."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import write_atomic

    layers = report["layers"]
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(layers)), 3.5))
    ax.bar(range(len(layers)), [x["bits"] for x in layers], color="tab:blue", alpha=0.7)
    ax.set_ylabel("bits")
    ax.set_xlabel("layer (model order)")
    ax2 = ax.twinx()
    ax2.plot(range(len(layers)), [x["score"] for x in layers], "r.-", lw=0.8)
    ax2.set_ylabel(f"{report['statistic']} |output|" if report["statistic"] in ("median", "mean", "max") else report["statistic"])
    ax.set_title(f"myQASR bit map: {report['size_mb']:.2f} MB ({report['convention']}) for a {report['budget_mb']:g} MB budget")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


# ---------------------------------------------------------------- suite token

ORDERS = ("descending", "ascending", "shuffled")
SCALE_SEARCHES = ("minmax", "cosine", "hessian")


def _parse(token: str, _bits, options: list[str]) -> dict:
    """``mixed:BUDGET[:calib=GROUP][:ORDER][:minmax|cosine|hessian|gptq][:gN][:asym][:rot][:aN]``;
    BUDGET: MB, or an average width over the allocated weights with a ``b`` (``2.25b``); GROUP: F,
    M, a speaker id, a data table of the suite, or 'all' (the head's training split); ``gptq``:
    GPTQ-error scores and GPTQ rounding of the transformer's linears (groups, zero-points)."""
    if not options:
        raise ValueError(f"quantization {token!r}: expected mixed:BUDGET[:calib=GROUP][:ORDER], e.g. 'mixed:4.5:calib=F' "
                         "(MB) or 'mixed:2.25b:gptq' (average bits)")
    budget = options[0]
    try:
        out = {"bits": 0} | ({"budget_bits": float(budget[:-1])} if budget.endswith("b") else {"budget_mb": float(budget)})
    except ValueError:
        raise ValueError(f"quantization {token!r}: budget {budget!r} is neither a number of MB nor an average width "
                         "such as 2.25b") from None
    for opt in options[1:]:
        if opt.startswith("calib="):
            out["calib"] = opt.removeprefix("calib=")
        elif opt in ORDERS:
            out["order"] = opt
        elif opt in SCALE_SEARCHES or opt == "gptq":
            out["clip"] = opt
        elif opt[:1] == "a" and opt[1:].isdigit():
            out["act_bits"] = int(opt[1:])
        elif opt[:1] == "g" and opt[1:].isdigit():
            out["group_size"] = int(opt[1:])
        elif opt in ("asym", "sym"):
            out["symmetric"] = opt == "sym"
        elif opt == "rot":
            out["rotate"] = True
        else:
            raise ValueError(f"quantization {token!r}: unknown option {opt!r} (calib=GROUP, {'|'.join(ORDERS)}, "
                             f"{'|'.join(SCALE_SEARCHES)}|gptq, gN, asym, aN)")
    if out.get("clip") != "gptq" and ("group_size" in out or out.get("symmetric") is False or "rotate" in out):
        raise ValueError(f"quantization {token!r}: groups, zero-points and rotations (gN, asym, rot) are for GPTQ rounding: "
                         "add ':gptq'")
    if out.get("clip") == "gptq" and "order" in out:
        raise ValueError(f"quantization {token!r}: with ':gptq' the layers with the least GPTQ error are lowered first; "
                         "no order option")
    return out


def _label(spec) -> str:
    budget = f"{spec.budget_bits:g}b" if getattr(spec, "budget_bits", None) is not None else f"{spec.budget_mb:g}MB"
    extra = "".join(f"-{x}" for x in (spec.order if spec.order != "descending" else None,
                                       spec.clip if spec.clip != "minmax" else None,
                                       f"g{spec.group_size}" if spec.group_size else None,
                                       "asym" if spec.symmetric is False else None,
                                       "rot" if getattr(spec, "rotate", None) else None) if x)
    return f"mixed{budget}-{spec.calib}{extra}"


def _build(base: nn.Module, spec, context) -> tuple[nn.Module, dict]:
    """``gptq``: the transformer's linears only (GPTQ needs a layer's inputs as rows; the
    convolutions would be left at 2-bit min-max)."""
    gptq_rounding = spec.clip == "gptq"
    model, report = mixed_precision(
        base, context.calibration(spec.calib), spec.budget_mb, order=spec.order, clip="minmax" if gptq_rounding else spec.clip,
        act_bits=spec.act_bits, seed=context.seed, rounding="gptq" if gptq_rounding else "uniform",
        group_size=spec.group_size, symmetric=spec.symmetric is not False, budget_bits=getattr(spec, "budget_bits", None),
        rotate=bool(getattr(spec, "rotate", None)),
        layer_coverage="transformer" if gptq_rounding else "myqasr")
    return model, {"mixed": report}


register(MethodSpec(
    name="mixed", summary="myQASR: per-layer bit widths to a memory budget from label-free sensitivity "
    "(calibration audio of a group)",
    grammar="mixed:BUDGET_MB|BITSb[:calib=GROUP][:descending|ascending|shuffled][:minmax|cosine|hessian|gptq][:gN][:asym][:rot][:aN]",
    parse=_parse, label=_label, build=_build, calibrates=lambda spec: True, bits=False))

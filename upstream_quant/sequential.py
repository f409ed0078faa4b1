"""Sequential calibration: layers quantized in execution order, each from statistics gathered with
the layers before it already quantized, one transformer block at a time (as GPTQ's reference
code and every GPTQ library do it for LLMs, here for any module).

The blocks are found, not declared: the ``nn.ModuleList`` holding most of the target layers. One
full forward pass over the calibration data records the first block's inputs (positional and
keyword arguments, per batch); from then on only blocks run. The model must chain its blocks
(block i+1's input is block i's first output, the other arguments unchanged); that is checked on
the first batch, and a model that does not is calibrated with full forward passes per stage
instead (correct, slower). Memory: the current block's inputs for every batch (a hidden state per
calibration batch, twice for reconstruction, which also keeps the full-precision path).

Written by hand: the GPTQ libraries hard-code LLM layouts (``model.layers``, ``hidden_states``
and ``attention_mask`` arguments) and CUDA; this needs any module on CPU or CUDA.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .accounting import under
from .calibration import LayerStats, map_tensors, removing, reusable, run_calibration


@dataclass
class Call:
    """One recorded call of a block: its arguments, detached."""

    args: tuple
    kwargs: dict


def first_output(out) -> torch.Tensor:
    """A block's hidden-state output: the tensor, or the first element of a tuple (fairseq and
    transformers layers return (hidden, attention, ...))."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"block output is {type(out).__name__}, not a tensor or a tuple starting with one")
    return out


def find_blocks(model: nn.Module, names: list[str]) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList of at least two children holding the most target layers, with its path."""
    best, best_count = None, 0
    for path, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) < 2 or not path:
            continue
        counts = [sum(under(n, f"{path}.{i}") for n in names) for i in range(len(m))]
        if sum(c > 0 for c in counts) >= 2 and sum(counts) > best_count:
            best, best_count = (path, m), sum(counts)
    return best


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not a.is_floating_point():
            return bool(torch.equal(a, b))
        return bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-4 * float(b.abs().max().clamp(min=1))))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


class Segment:
    """A part of the model run over the calibration data: a block over its recorded calls, or
    (fallback) the whole model over the calibration."""

    def __init__(self, module: nn.Module, calls: list[Call] | None = None, calibration=None):
        self.module, self.calls, self.calibration = module, calls, calibration

    @torch.no_grad()
    def run(self, inputs: list[torch.Tensor] | None = None, first_only: bool = False) -> list[torch.Tensor] | None:
        """Run every call (with the hidden state replaced by `inputs[i]` if given); the outputs.
        A hook raising Stop ends a call early (statistics need only the layers up to a stage)."""
        if self.calls is None:
            try:
                run_calibration(self.module, self.calibration)
            except Stop:
                raise RuntimeError("a stage stop escaped a full-model pass") from None
            return None
        outs = []
        for i, call in enumerate(self.calls[:1] if first_only else self.calls):
            args = call.args if inputs is None else (inputs[i], *call.args[1:])
            try:
                outs.append(first_output(self.module(*args, **call.kwargs)).detach())
            except Stop:
                outs.append(None)
        return outs


class Stop(Exception):
    """Raised by a statistics hook once the last layer of a stage has its input: the rest of the
    block need not run (it saves most of a block pass for the early stages)."""


def capture(model: nn.Module, blocks: nn.ModuleList, calibration, hooks: list) -> tuple[list[Call], bool]:
    """One forward pass over the calibration: the first block's calls, and whether the blocks
    chain (checked on the first batch). `hooks` are (module, pre-hook) pairs active meanwhile."""
    calls: list[Call] = []
    first: dict[int, Call] = {}

    def record(i):
        def hook(_m, args, kwargs):
            call = Call(map_tensors(torch.Tensor.detach, args), map_tensors(torch.Tensor.detach, kwargs))
            if i == 0:
                calls.append(call)
            if len(calls) == 1 and i not in first:
                first[i] = call
        return hook

    handles = [b.register_forward_pre_hook(record(i), with_kwargs=True) for i, b in enumerate(blocks)]
    with removing(handles + [m.register_forward_pre_hook(h) for m, h in hooks]):
        run_calibration(model, calibration)
    chained = len(first) == len(blocks) and all(first[i].args for i in first)
    with torch.no_grad():
        for i in range(len(blocks) - 1) if chained else ():
            a, b = first[i], first[i + 1]
            if not (_same(a.args[1:], b.args[1:]) and _same(a.kwargs, b.kwargs)):
                chained = False
                break
            if not _same(first_output(blocks[i](*a.args, **a.kwargs)), b.args[0]):
                chained = False
                break
    return calls, chained


def stages(segment: Segment, names: dict[str, nn.Module]) -> list[list[str]]:
    """The segment's target layers in execution order, those fed the same tensor (q, k, v) in one
    stage; layers that never ran come last (their method then says it had no data)."""
    seen: dict[str, tuple] = {}

    def hook(name):
        def fn(_m, args):
            if name not in seen:  # x is kept alive, so no later input can reuse its address
                x = args[0]
                seen[name] = (len(seen), x.data_ptr(), tuple(x.shape), x)
        return fn

    with removing([m.register_forward_pre_hook(hook(n)) for n, m in names.items()]):
        segment.run(first_only=True)
    groups: dict[tuple, list[str]] = {}
    for name in sorted(seen, key=lambda n: seen[n][0]):
        groups.setdefault(seen[name][1:3], []).append(name)
    out = list(groups.values())
    missing = [n for n in names if n not in seen]
    return out + ([missing] if missing else [])


def collect(segment: Segment, layers: dict[str, nn.Module], need_hessian: bool, need_sample: bool,
            stop_after: str | None = None) -> dict[str, LayerStats]:
    """Statistics of `layers`' inputs over the segment's calls; with `stop_after` (the stage's last
    layer in execution order, called once per call), each call ends once that layer has its input."""
    stats = {n: LayerStats() for n in layers}

    def hook(n):
        def fn(_m, args):
            stats[n].add(args[0], need_hessian, need_sample)
            if n == stop_after:
                raise Stop
        return fn

    with removing([m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]):
        segment.run()
    return stats


QuantizeFn = Callable[[str, nn.Module, LayerStats | None], nn.Module]
RefineFn = Callable[[nn.Module, str, dict[str, nn.Module], list[Call], list[torch.Tensor], list[torch.Tensor]], None]


def quantize_sequential(model: nn.Module, layers: dict[str, nn.Module], calibration, quantize_layer: QuantizeFn,
                        need_hessian: bool, need_sample: bool, refine: RefineFn | None = None,
                        progress: bool = True, keep: Path | None = None) -> list:
    """Replace `layers` of `model` (in place: give it a copy) by `quantize_layer(name, layer,
    stats)`, stage by stage. `refine(block, path, layers, calls, inputs, targets)`, if given, is
    called after each block's layers are quantized, with the block's quantized-path inputs and the
    full-precision block's outputs on the full-precision path (block reconstruction); what it
    returns is collected and returned.

    ``keep``: a folder where each finished block is saved (atomically) with its refine report; a
    call that finds block i there loads it instead of quantizing it again and recomputes only the
    block's outputs on the calibration inputs, so an interrupted job continues from the next block
    and ends with the same model (each block's work is seeded by itself, not by the blocks before)."""
    reports: list = []
    calibration = reusable(calibration)
    found = find_blocks(model, list(layers))
    if found is None:
        if refine is not None:
            raise ValueError(f"block reconstruction needs the target layers inside a list of blocks (an nn.ModuleList "
                             f"of transformer layers); {type(model).__name__} has none holding them")
        _run_stages(model, Segment(model, calibration=calibration), layers, "", quantize_layer, need_hessian, need_sample)
        return reports
    path, blocks = found
    inside = {n: m for n, m in layers.items() if under(n, path)}
    outside = {n: m for n, m in layers.items() if n not in inside}
    out_stats = {n: LayerStats() for n in outside}
    hooks = [(m, lambda _m, args, n=n: out_stats[n].add(args[0], need_hessian, need_sample)) for n, m in outside.items()]
    calls, chained = capture(model, blocks, calibration, hooks)
    if not calls:
        raise ValueError(f"the calibration forward passes never reached {path}.0")
    if not chained:
        if refine is not None:
            raise ValueError(f"block reconstruction needs blocks that chain (block i+1 takes block i's output); "
                             f"{path} of {type(model).__name__} does not")
        warnings.warn(f"{path}: blocks do not chain (block i+1's input is not block i's output); "
                      "calibrating with full forward passes per stage (slower)")
        _run_stages(model, Segment(model, calibration=calibration), layers, "", quantize_layer, need_hessian, need_sample)
        return reports
    q_inputs = [c.args[0] for c in calls]
    fp_inputs = list(q_inputs) if refine is not None else None
    for i, block in enumerate(tqdm(blocks, desc=f"quantize {path}", disable=not progress, leave=False)):
        prefix = f"{path}.{i}"
        mine = {n[len(prefix) + 1:]: m for n, m in inside.items() if under(n, prefix)}
        segment = Segment(block, calls)
        if not mine:
            q_inputs = segment.run(q_inputs)
            fp_inputs = segment.run(fp_inputs) if fp_inputs is not None else None
            continue
        targets = segment.run(fp_inputs) if fp_inputs is not None else None
        saved = keep / f"block{i}.pt" if keep is not None else None
        if saved is not None and saved.is_file():
            state = torch.load(saved, map_location="cpu", weights_only=False)
            device = next(block.parameters()).device
            for name, layer in state["layers"].items():  # the block's quantized layers, nothing else changed
                block.set_submodule(name, layer.to(device))
            if state["report"] is not None:
                reports.append(state["report"])
        else:
            bound = Segment(block, [Call((x, *c.args[1:]), c.kwargs) for x, c in zip(q_inputs, calls)])
            _run_stages(block, bound, mine, prefix + ".", quantize_layer, need_hessian, need_sample)
            report = None
            if refine is not None:
                report = refine(block, prefix, {n: block.get_submodule(n) for n in mine}, calls, q_inputs, targets)
                reports.append(report)
            if saved is not None:
                _save_block(saved, {n: block.get_submodule(n) for n in mine}, report)
        q_inputs = segment.run(q_inputs)
        fp_inputs = targets
    for name, layer in outside.items():
        model.set_submodule(name, quantize_layer(name, layer, out_stats[name]))
    return reports


def _save_block(path: Path, layers: dict[str, nn.Module], report) -> None:
    """A finished block's quantized layers (ours, so they pickle; the blocks of some upstreams hold
    local functions that do not) and its report, written whole or not at all (a kill mid-write
    leaves no file)."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"layers": layers, "report": report}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _run_stages(root: nn.Module, segment: Segment, layers: dict[str, nn.Module], prefix: str, quantize_layer: QuantizeFn,
                need_hessian: bool, need_sample: bool) -> None:
    for stage in stages(segment, layers):
        current = {n: root.get_submodule(n) for n in stage}
        # stopping early is safe in a block (its calls are ours to end) when every stage layer runs
        # once per call; a full-model pass (fallback) always runs to the end
        stop = stage[-1] if segment.calls is not None and _called_once(segment, current) else None
        stats = collect(segment, current, need_hessian, need_sample, stop_after=stop)
        for n in stage:
            root.set_submodule(n, quantize_layer(prefix + n, current[n], stats[n]))


def _called_once(segment: Segment, layers: dict[str, nn.Module]) -> bool:
    counts = dict.fromkeys(layers, 0)
    with removing([m.register_forward_pre_hook(lambda *_a, n=n: counts.__setitem__(n, counts[n] + 1))
                   for n, m in layers.items()]):
        segment.run(first_only=True)
    return all(c == 1 for c in counts.values())

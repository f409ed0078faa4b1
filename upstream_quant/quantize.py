"""`quantize(module, config)`: the one entry point for weight quantization, in the spirit of
torchao's `quantize_`. A method is a frozen config dataclass plus a per-layer function, which
its module under methods/ registers here (`register_method`, through `methods.register`); this
module names no method: a config's own attributes say what it needs (``needs_calibration``,
``needs_hessian``, ``needs_grads``, ``sequential``, ``layer_types``, ``per_layer``)."""
from __future__ import annotations

import copy
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import CalibrationError, collect_stats
from .qweight import QuantizedLayer, QuantizedWeight, check_act_bits, check_group_size
from .rotation import RotationError, block_size, layer_seed, rotate, rotate_hessian
from .select import ALL, FilterFn, select_layers, targets_record  # noqa: F401 (ALL: re-exported)
from .sequential import quantize_sequential

Method = Callable[..., QuantizedWeight]  # (weight, config, layer statistics or None) -> QuantizedWeight
METHODS: dict[type, Method] = {}
# Block-level methods: after a block's layers are quantized (sequentially), refine(config, block,
# path, layers, calls, inputs, targets) improves them against the full-precision block's output.
REFINERS: dict[type, Callable] = {}


def register_method(config_cls: type, fn: Method, refine: Callable | None = None) -> None:
    METHODS[config_cls] = fn
    if refine is not None:
        REFINERS[config_cls] = refine


def target_layers(module: nn.Module, targets: tuple) -> dict[str, nn.Module]:
    """Linear/Conv1d layers chosen by `targets` (groups, name globs, module types; see select.py)."""
    return select_layers(module, targets)[0]


def supports(config, layer: nn.Module) -> bool:
    """Whether a method's config can quantize this kind of layer (GPTQ and the output-aware
    searches take a layer's inputs as rows: Linear only)."""
    kinds = getattr(config, "layer_types", ("linear", "conv1d"))
    return ("linear" if isinstance(layer, nn.Linear) else "conv1d") in kinds


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a layer computes with, including weight normalisation (the positional conv)."""
    if hasattr(layer, "weight_v") and hasattr(layer, "weight_g"):
        dim = next((h.dim for h in layer._forward_pre_hooks.values() if hasattr(h, "dim")), 0)
        return torch._weight_norm(layer.weight_v, layer.weight_g, dim)
    return layer.weight


def rotated_layer(name: str, weight: torch.Tensor, stats):
    """A linear layer's weight and calibration statistics in its rotated input basis, and the
    rotation's seed (from the layer's name): what a method rounds when asked to rotate."""
    seed = layer_seed(name)
    return rotate(weight.detach(), seed), rotated_stats(stats, seed), seed


def rotated_stats(stats, seed: int):
    """A layer's calibration statistics as the rotated inputs R x would give them (X^T X -> R X^T X R^T,
    sampled rows -> R x); the output-side gradients are unchanged."""
    if stats is None:
        return None
    out = copy.copy(stats)
    if stats.hessian is not None:
        out.hessian = rotate_hessian(stats.hessian, seed)
    out._parts = [rotate(p, seed) for p in stats._parts]
    return out


def copy_module(module: nn.Module) -> nn.Module:
    """A deep copy; weight norm leaves a non-leaf ``weight`` attribute that deepcopy refuses, so it
    is refreshed as a plain tensor first (the forward pre-hook recomputes it anyway)."""
    for layer in module.modules():
        if hasattr(layer, "weight_v") and isinstance(getattr(layer, "weight", None), torch.Tensor):
            layer.weight = effective_weight(layer).detach()
    return copy.deepcopy(module)


def quantize(
    module: nn.Module,
    config,
    calibration=None,
    inplace: bool = False,
    progress: bool = True,
    filter_fn: FilterFn | None = None,
    resume_dir: str | Path | None = None,
) -> nn.Module:
    """Quantize the chosen layers of `module` (a copy unless `inplace`) with `config`.

    Layers: Linear/Conv1d layers chosen by `config.targets` (accounting groups of our upstreams,
    fully qualified name globs such as ``"encoder.layers.*.fc1"``, module types), or by
    ``filter_fn(module, fqn) -> bool``, which then replaces the targets. Convolutions a method
    cannot handle are skipped with one warning, unless named explicitly (an error).
    `calibration` (methods that need layer inputs): see calibration.run_calibration: an iterable
    of model inputs (tensor / tuple of positional arguments / dict of keyword arguments per batch),
    a callable ``run(model)``, or, for our upstreams, a list of 1-D 16 kHz waveforms.
    An error leaves `module` unchanged. `resume_dir`: block-wise methods (sequential GPTQ, block
    reconstruction) keep each finished block there and, called again with the same arguments,
    continue from the next one (an interrupted 40-minute job loses one block, not all).
    """
    if type(config) not in METHODS and not hasattr(config, "per_layer"):
        raise TypeError(f"unknown quantization config {type(config).__name__}; known: {[c.__name__ for c in METHODS]}")
    check_act_bits(getattr(config, "act_bits", None))  # before any work
    check_group_size(getattr(config, "group_size", None))
    if isinstance(module, (nn.Linear, nn.Conv1d)):  # a bare layer: quantized as the one child of a container
        if inplace:
            raise ValueError("a bare layer cannot be replaced in place: use the returned QuantizedLayer (inplace=False)")
        wrapped = quantize(nn.Sequential(module), config, calibration, progress=progress,
                           filter_fn=None if filter_fn is None else (lambda m, fqn: filter_fn(m, "")))
        out = wrapped[0]
        out.quantization = wrapped.quantization
        return out
    layers, explicit = select_layers(module, config.targets, filter_fn)
    if hasattr(config, "per_layer"):  # a config that sets each layer's own parameters (mixed precision)
        missing = sorted(set(config.layers) - set(layers))
        if missing:
            raise ValueError(f"{type(config).__name__} names layers that are not quantizable here: {missing[:5]}")
        layers = {n: m for n, m in layers.items() if n in config.layers}
    per_layer = {name: config.per_layer(name, layer) if hasattr(config, "per_layer") else config
                 for name, layer in layers.items()}
    unsupported = [n for n, m in layers.items() if not supports(per_layer[n], m)]
    named = [n for n in unsupported if n in explicit]
    if named:
        raise ValueError(f"{type(config).__name__} supports Linear layers only (it uses their inputs as rows); "
                         f"convolutions named: {named[:3]}; use UniformConfig/BinaryConfig for them")
    if unsupported:
        warnings.warn(f"{type(config).__name__} supports Linear layers only: skipping {len(unsupported)} convolution(s) "
                      f"{unsupported[:4]}{' ...' if len(unsupported) > 4 else ''}")
        layers = {n: m for n, m in layers.items() if n not in unsupported}
        if not layers:
            raise ValueError(f"nothing to quantize: {type(config).__name__} supports Linear layers only and only "
                             "convolutions were chosen")
    for name, layer in layers.items():  # a width the rotation cannot take is refused before any work
        if getattr(per_layer[name], "rotate", False) and isinstance(layer, nn.Linear):
            try:
                block_size(layer.in_features)
            except RotationError as err:
                raise RotationError(f"layer {name}: {err}") from None
    needs = [n for n in layers if getattr(per_layer[n], "needs_calibration", False)]
    if needs and calibration is None:
        raise CalibrationError(f"{type(config).__name__} needs calibration data: pass calibration= (waveforms for our "
                               "upstreams, an iterable of model inputs, or a callable run(model))")

    def build(name: str, layer: nn.Module, stats) -> QuantizedLayer:
        layer_config = per_layer[name]
        weight, seed = effective_weight(layer), None
        if getattr(layer_config, "rotate", False) and isinstance(layer, nn.Linear):  # convolutions stay as they are
            weight, stats, seed = rotated_layer(name, weight, stats)
        qweight = METHODS[type(layer_config)](weight, layer_config, stats)
        out = QuantizedLayer(layer, qweight, config.act_bits, seed)
        if hasattr(qweight, "latent"):  # a block method's starting point, for its refine step
            out.latent = qweight.latent
        return out

    was_training = module.training
    reports = []
    if needs and getattr(config, "sequential", False):
        model = copy_module(module).eval()
        refine = REFINERS.get(type(config))
        reports = quantize_sequential(model, {n: model.get_submodule(n) for n in layers}, calibration, build,
                                      need_hessian=getattr(config, "needs_hessian", False),
                                      need_sample=not getattr(config, "needs_hessian", False),
                                      refine=None if refine is None else (lambda *a: refine(config, *a, progress=progress)),
                                      progress=progress, keep=None if resume_dir is None else Path(resume_dir))
        for name in layers:
            if hasattr(model.get_submodule(name), "latent"):
                del model.get_submodule(name).latent
        model.train(was_training)
        if inplace:
            for name in layers:
                module.set_submodule(name, model.get_submodule(name))
            model = module
    else:
        stats = {}
        if needs:
            module.eval()
            try:
                stats = collect_stats(module, {n: layers[n] for n in needs}, calibration,
                                      need_hessian=any(getattr(per_layer[n], "needs_hessian", False) for n in needs),
                                      need_sample=not all(getattr(per_layer[n], "needs_hessian", False) for n in needs),
                                      need_grads=any(getattr(per_layer[n], "needs_grads", False) for n in needs))
            finally:
                module.train(was_training)
        new_layers = {}
        for name, layer in tqdm(layers.items(), desc=f"quantize {type(config).__name__}", disable=not progress, leave=False):
            new_layers[name] = build(name, layer, stats.get(name))
        model = module if inplace else copy_module(module)
        for name, layer in new_layers.items():
            model.set_submodule(name, layer)
    record = asdict(config)
    record.pop("extra", None)
    if "targets" in record:
        record["targets"] = targets_record(config.targets)
    if filter_fn is not None:
        record["filter_fn"] = getattr(filter_fn, "__qualname__", repr(filter_fn))
    model.quantization = {"method": type(config).__name__, "config": record}
    if reports:
        model.quantization["blocks"] = reports
    return model

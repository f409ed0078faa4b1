"""`quantize(module, config)`: the one entry point for weight quantization, in the spirit of
torchao's `quantize_`. A method is a frozen config dataclass plus a function registered here;
adding one touches nothing else."""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .accounting import group_of
from .binary import BinaryConfig, binarize
from .calibration import CalibrationError, collect_stats
from .gptq import GPTQConfig, quantize_gptq
from .qweight import QuantizedLayer, QuantizedWeight, check_act_bits, check_group_size
from .uniform import UniformConfig, quantize_uniform

Method = Callable[..., QuantizedWeight]
METHODS: dict[type, Method] = {
    BinaryConfig: lambda w, cfg, stats: binarize(w, cfg),
    UniformConfig: quantize_uniform,
    GPTQConfig: quantize_gptq,
}
ALL = "*"  # target every Linear/Conv1d, whatever its group


def register_method(config_cls: type, fn: Method) -> None:
    METHODS[config_cls] = fn


def target_layers(module: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Module]:
    """Linear/Conv1d layers whose accounting group is in `targets` (or all, with '*')."""
    prefixes = getattr(module, "group_prefixes", {})
    return {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d)) and (ALL in targets or group_of(name, prefixes) in targets)
    }


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a layer computes with, including weight normalisation (the positional conv)."""
    if hasattr(layer, "weight_v") and hasattr(layer, "weight_g"):
        dim = next((h.dim for h in layer._forward_pre_hooks.values() if hasattr(h, "dim")), 0)
        return torch._weight_norm(layer.weight_v, layer.weight_g, dim)
    return layer.weight


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
    calibration: list[torch.Tensor] | None = None,
    inplace: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Quantize the target layers of `module` (a copy unless `inplace`) with `config`.

    `calibration`: unlabelled 16 kHz waveforms (1-D tensors) for methods that need layer inputs
    (GPTQ, cosine clipping); `module` must then be an upstream (forward(wavs, wavs_len)).
    Every layer is quantized before any is replaced, so an error leaves the module unchanged.
    """
    if type(config) not in METHODS and not hasattr(config, "per_layer"):
        raise TypeError(f"unknown quantization config {type(config).__name__}; known: {[c.__name__ for c in METHODS]}")
    check_act_bits(getattr(config, "act_bits", None))  # before any work
    check_group_size(getattr(config, "group_size", None))
    layers = target_layers(module, config.targets)
    if hasattr(config, "per_layer"):  # a config that sets each layer's own parameters (mixed precision)
        missing = sorted(set(config.layers) - set(layers))
        if missing:
            raise ValueError(f"{type(config).__name__} names layers that are not quantizable here: {missing[:5]}")
        layers = {n: m for n, m in layers.items() if n in config.layers}
    if not layers:
        present = sorted({group_of(n, getattr(module, "group_prefixes", {})) for n, m in module.named_modules()
                          if isinstance(m, (nn.Linear, nn.Conv1d))})
        raise ValueError(f"nothing to quantize: no Linear/Conv1d layer in groups {list(config.targets)}; "
                         f"groups with such layers: {present or 'none'}")
    per_layer = {name: config.per_layer(name, layer) if hasattr(config, "per_layer") else config
                 for name, layer in layers.items()}
    stats = {}
    if getattr(config, "needs_calibration", False):
        if calibration is None:
            raise CalibrationError(f"{type(config).__name__} needs calibration audio: pass calibration=[waveforms]")
        convs = [n for n, m in layers.items() if not isinstance(m, nn.Linear) and getattr(per_layer[n], "needs_calibration", False)]
        if convs:
            raise ValueError(f"{type(config).__name__} uses layer inputs and supports Linear layers only; "
                             f"convolutions targeted: {convs[:3]}; use UniformConfig/BinaryConfig for them")
        was_training = module.training
        module.eval()
        needs = {n: m for n, m in layers.items() if isinstance(m, nn.Linear)}
        stats = collect_stats(module, needs, calibration, need_hessian=isinstance(config, GPTQConfig),
                              need_sample=not isinstance(config, GPTQConfig))
        module.train(was_training)
    new_layers = {}
    for name, layer in tqdm(layers.items(), desc=f"quantize {type(config).__name__}", disable=not progress, leave=False):
        layer_config = per_layer[name]
        qweight = METHODS[type(layer_config)](effective_weight(layer), layer_config, stats.get(name))
        new_layers[name] = QuantizedLayer(layer, qweight, config.act_bits)
    model = module if inplace else copy_module(module)
    for name, layer in new_layers.items():
        model.set_submodule(name, layer)
    model.quantization = {"method": type(config).__name__, "config": asdict(config)}
    model.quantization["config"].pop("extra", None)
    return model

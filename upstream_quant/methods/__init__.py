"""Quantization methods as plug-ins: each module of this package defines one method and registers
a `MethodSpec`: its suite token (``NAME:BITS[:OPTIONS]``, the one way suites and `bench quantize`
name a method), its label in tables, its config for `quantize()` or its own build step, what
data it needs and where it sits in the paper table. Every module here is imported, so adding a
method is adding a file; the suite parser, the runner, the CLI and the tables read this registry.

A spec's fields are read from the suite token into the run's quantization spec (`bench.suites.
QuantSpec`), whose fields are: bits, group_size, clip, act_bits, symmetric, plain, steps,
budget_mb, calib, order, qat_steps."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..quantize import register_method


@dataclass(frozen=True)
class BuildContext:
    """What a method that builds its own model (mixed precision, QAT) may ask of the run: audio of
    the head's training data, or of a group of it or another data table (``calibration(group)``:
    waveforms, ``unlabelled_files(max_hours, group)``: paths), a work folder of its own, the
    device, DDP processes, seed, the run's ``--set`` options of the method's section, whether to
    show progress, and the training-curve logger (`upstream_quant.curves.LOGGERS`)."""

    calibration: Callable[[str], list]
    unlabelled_files: Callable[[float | None, str], list[str]]
    work_dir: Path
    device: str | None
    devices: int
    seed: int
    options: dict = field(default_factory=dict)
    progress: bool = True
    logger: str | None = None
    callbacks: list = field(default_factory=list)  # Lightning callbacks for its training (bench's timeline)
    window: int | None = None  # the input window the run's task pads to (TaskSpec.window): train on it too


@dataclass(frozen=True)
class MethodSpec:
    """A quantization method as the rest of the project sees it.

    ``parse(token, bits, options)``: the spec fields of a suite token's options (those after
    NAME:BITS, or after NAME: where ``bits`` is False and bits is None), raising ValueError naming
    a bad option; ``label(spec)``:
    its name in tables (``gptq3-g64``); ``config(spec)``: its `quantize()` config, or ``build(base,
    spec, context) -> (model, info)`` for methods with their own procedure; ``calibrates(spec)``:
    whether it reads unlabelled calibration audio (``--set calibration.count``), by default what
    its config's ``needs_calibration`` says; ``trains``:
    whether its model comes from training on the data's audio (``--set NAME.*``, fields
    ``option_fields``); ``order``: its place among a paper row's methods (trained before
    post-training); ``bit_range``: the widths it takes (``bits`` False: none, a budget instead)."""

    name: str
    summary: str
    grammar: str
    parse: Callable[[str, list[str]], dict]
    label: Callable[[object], str]
    config: Callable[[object], object] | None = None
    build: Callable[..., tuple] | None = None
    calibrates: Callable[[object], bool] | None = None  # None: its config's needs_calibration
    trains: bool = False
    option_fields: tuple[str, ...] = ()
    order: int = 9
    bits: bool = True
    bit_range: tuple[int, int] = (1, 8)
    # a `quantize()` method: its config class, per-layer function and block refinement (if any)
    config_cls: type | None = None
    weight_fn: Callable | None = None
    refine: Callable | None = None


    def uses_calibration(self, spec) -> bool:
        """Whether the spec's model is made from calibration audio: ``calibrates`` when given
        (a build step), else what the method's `quantize()` config says of itself."""
        if self.calibrates is not None:
            return self.calibrates(spec)
        return self.config is not None and bool(getattr(self.config(spec), "needs_calibration", False))


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; one with a config class becomes a `quantize()` method too."""
    if spec.name in METHODS and METHODS[spec.name] is not spec:
        raise ValueError(f"method {spec.name!r} is registered twice")
    METHODS[spec.name] = spec
    if spec.config_cls is not None:
        register_method(spec.config_cls, spec.weight_fn, spec.refine)
    return spec


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def parse_options(token: str, options: list[str], *, group: bool = False, clips: tuple[str, ...] = (),
                  act: bool = False, asym: bool = False, flags: tuple[str, ...] = (), steps: str | None = None,
                  rot: bool = False) -> dict:
    """The options most methods share: ``gN`` (group size), a clip name, ``aN`` (activation bits),
    ``asym|sym``, named ``flags`` (True when present), ``sN`` (into field ``steps``) and ``rot``
    (rotated inputs, upstream_quant.rotation: field ``rotate``)."""
    out: dict = {}
    known = [x for x, on in (("gN", group), ("|".join(clips), clips), ("aN", act), ("asym|sym", asym), ("sSTEPS", steps),
                             ("rot", rot)) if on] + list(flags)
    for opt in options:
        if group and opt[:1] == "g" and opt[1:].isdigit():
            out["group_size"] = int(opt[1:])
        elif opt in clips:
            out["clip"] = opt
        elif act and opt[:1] == "a" and opt[1:].isdigit():
            out["act_bits"] = int(opt[1:])
        elif asym and opt in ("asym", "sym"):
            out["symmetric"] = opt == "sym"
        elif opt in flags:
            out[opt] = True
        elif steps and opt[:1] == "s" and opt[1:].isdigit():
            out[steps] = int(opt[1:])
        elif rot and opt == "rot":
            out["rotate"] = True
        else:
            raise ValueError(f"quantization {token!r}: unknown option {opt!r} ({', '.join(known) or 'none'})")
    return out


def suffix(*parts) -> str:
    """``-a-b`` of the parts that are set, for labels."""
    return "".join(f"-{p}" for p in parts if p)


def common_label(spec) -> str:
    """``{method}{bits}`` then the options that differ from their defaults, in a fixed order."""
    return f"{spec.method}{spec.bits}" + suffix(
        spec.clip if spec.clip != "minmax" else None,
        f"g{spec.group_size}" if spec.group_size else None,
        f"a{spec.act_bits}" if spec.act_bits else None,
        "plain" if getattr(spec, "plain", None) else None,
        None if getattr(spec, "symmetric", None) is None else ("sym" if spec.symmetric else "asym"),
        f"s{spec.steps}" if getattr(spec, "steps", None) is not None else None,
        "rot" if getattr(spec, "rotate", None) else None)


for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

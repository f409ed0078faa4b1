"""Which layers of a module a quantization config takes, as torchao's ``filter_fn`` and every GPTQ
library choose them: by our accounting groups (for our upstreams), fully qualified name globs,
module types, or a ``filter_fn(module, fqn) -> bool`` that replaces ``targets`` altogether."""
from __future__ import annotations

import fnmatch
from typing import Callable

from torch import nn

from .accounting import group_of

ALL = "*"  # every Linear/Conv1d, whatever its group
GROUPS = ("cnn", "feature_projection", "positional_conv", "transformer", "heads", "other")
FEATURE_GROUPS = GROUPS[:4]  # every layer that computes features (not the pretraining heads)
QUANTIZABLE = (nn.Linear, nn.Conv1d)
FilterFn = Callable[[nn.Module, str], bool]


def _ancestors(fqn: str) -> list[str]:
    """'a.b.c' -> ['a.b.c', 'a.b', 'a']: a glob naming a parent module takes its layers."""
    parts = fqn.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def describe(target) -> str:
    return target.__name__ if isinstance(target, type) else repr(target)


def check_targets(targets) -> None:
    if isinstance(targets, (str, type)) or not isinstance(targets, (tuple, list)):
        raise TypeError(f"targets must be a tuple of group names, name globs or module types, got {targets!r}")
    for t in targets:
        if not (isinstance(t, str) and t) and not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"targets entry {t!r} is neither a group name, a name glob nor an nn.Module type")


def select_layers(module: nn.Module, targets, filter_fn: FilterFn | None = None) -> tuple[dict[str, nn.Module], set[str]]:
    """The Linear/Conv1d layers chosen, and the names among them chosen *explicitly* (by their own
    name or by a convolution type), which a method that cannot handle them must refuse rather than
    skip. A target that matches nothing is an error naming it: a typo must not quantize less."""
    candidates = {name: m for name, m in module.named_modules() if isinstance(m, QUANTIZABLE)}
    if filter_fn is not None:
        chosen = {}
        for name, m in candidates.items():
            if filter_fn(m, name):
                chosen[name] = m
        if not chosen:
            raise ValueError(f"filter_fn selected none of the {len(candidates)} Linear/Conv1d layers; "
                             f"first few: {list(candidates)[:5]}")
        return chosen, set()
    check_targets(targets)
    prefixes = getattr(module, "group_prefixes", {})
    chosen, explicit = {}, set()
    for target in targets:
        hits = []
        for name, m in candidates.items():
            if isinstance(target, type):
                hit = isinstance(m, target)
                own = hit and issubclass(target, nn.Conv1d)
            elif target == ALL:
                hit, own = True, False
            elif target in GROUPS:
                hit, own = group_of(name, prefixes) == target, False
            else:
                hit = any(fnmatch.fnmatchcase(a, target) for a in _ancestors(name))
                own = fnmatch.fnmatchcase(name, target) and not any(c in target for c in "*?[")
            if hit:
                hits.append(name)
                if own:
                    explicit.add(name)
        if not hits and target not in GROUPS:  # a group may be empty in one upstream (checked below)
            present = sorted({group_of(n, prefixes) for n in candidates})
            raise ValueError(f"target {describe(target)} matches no Linear/Conv1d layer; groups here: {present}, "
                             f"layer names like {list(candidates)[:3]}")
        for name in hits:
            chosen[name] = candidates[name]
    if not chosen:
        if not prefixes:
            raise ValueError(f"targets {[describe(t) for t in targets]} name accounting groups, but "
                             f"{type(module).__name__} is not one of our upstreams (it has no groups): choose its layers with "
                             f"name globs (targets=('encoder.layers.*',)), module types (targets=(nn.Linear,)) or filter_fn; "
                             f"layer names like {list(candidates)[:3]}")
        raise ValueError(f"nothing to quantize in groups {list(targets)}")
    return chosen, explicit


def targets_record(targets) -> list[str]:
    """The targets as JSON (types by qualified name), for the model's quantization record."""
    return [f"{t.__module__}.{t.__qualname__}" if isinstance(t, type) else t for t in targets]

"""Reading checkpoint files safely and with clear errors.

Checkpoints from s3prl and fairseq are pickles. We first try torch's safe loader
(`weights_only=True`); s3prl-converted files load that way. fairseq files pickle fairseq
classes (the `Dictionary` of each label set) and OmegaConf configs: those load only with
the full unpickler, which runs code from the file, so they must come from a source you
trust. fairseq itself is not needed: its classes are read as plain attribute holders.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or lacks a required field."""


class _Attrs:
    """Stand-in for a pickled class we do not import (fairseq's): keeps its state as attributes."""

    def __init__(self, *args, **kwargs):
        self._args = args

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._state = state


class _ForeignUnpickler(pickle.Unpickler):
    foreign = {"fairseq", "optimizers"}  # top-level packages we read without importing

    def find_class(self, module: str, name: str):
        if module.split(".")[0] in self.foreign:
            return _Attrs
        return super().find_class(module, name)


class _ForeignPickle:
    """A `pickle_module` for torch.load that reads fairseq objects without fairseq."""

    Unpickler = _ForeignUnpickler
    load = pickle.load
    __name__ = "pickle"


def read_checkpoint(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint dict onto the CPU; errors name the file and the missing field."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_ForeignPickle)
        except Exception as err:  # corrupt file, truncated download, not a torch file
            raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks field(s) {missing}; it has {sorted(state)[:12]}")
    return state


def to_plain(obj: Any) -> Any:
    """OmegaConf configs and attribute holders -> plain dicts, so dataclass configs can read them."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # omegaconf comes with s3prl; plain dicts need nothing
        pass
    if isinstance(obj, _Attrs):
        return {k: to_plain(v) for k, v in obj.__dict__.items() if not k.startswith("_")}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj

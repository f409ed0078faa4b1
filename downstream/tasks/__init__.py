"""SUPERB tasks as plug-ins: each module of this package registers a `TaskSpec` (head, loss,
decoding, scoring, metrics, data layouts, presets). Every module here is imported, so adding a
task is adding a file; nothing else names a task."""

from __future__ import annotations

import importlib
import pkgutil

from .base import DEFAULT_TASK, TASKS, DownstreamTask, TaskConfig, TaskSpec, get_task, make_task, preset, register_task

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

from .asr import mini_asr, superb_asr  # noqa: E402  (the presets most callers want)
from .ks import superb_ks  # noqa: E402

__all__ = ["DEFAULT_TASK", "TASKS", "DownstreamTask", "TaskConfig", "TaskSpec", "get_task", "make_task", "mini_asr", "preset",
           "register_task", "superb_asr", "superb_ks"]

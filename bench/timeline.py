"""A suite's timeline (`STORE/SUITE/work/timeline.jsonl`): one JSON line per phase of each run (run
start, each training epoch, checkpoint, validation, test, packed-file and row writing, and a
failure or an interruption it could see) with the time, machine, process and run. It says where
a run was when it stopped (`bench status`), and it is how the resume chaos test (`bench.chaos`)
aims its kills at phases of a run instead of at fixed seconds."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import lightning as L


class Timeline:
    """Appends events; a line is one ``write`` of under a page, so a kill never tears one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.run, self.config_hash = "", ""

    def event(self, name: str, **payload) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"t": round(time.time(), 4), "host": platform.node(), "pid": os.getpid(), "run": self.run,
                           "hash": self.config_hash, "event": name} | payload)
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def callback(self) -> L.Callback:
        return _Phases(self)


def read_timeline(path: str | Path) -> list[dict]:
    """The events in order; a line cut short by a kill is skipped."""
    out = []
    for line in Path(path).read_text().splitlines() if Path(path).is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class _Phases(L.Callback):
    """Training's phases, named by the epoch they belong to (the same in a resumed process)."""

    def __init__(self, timeline: Timeline):
        self.timeline = timeline

    def on_train_epoch_start(self, trainer, module):
        # where training is and where it ends: `bench status` estimates a running run's time left
        self.timeline.event("epoch", epoch=trainer.current_epoch, step=trainer.global_step,
                            max_epochs=trainer.max_epochs if (trainer.max_epochs or -1) > 0 else None,
                            max_steps=trainer.max_steps if (trainer.max_steps or -1) > 0 else None)

    def on_save_checkpoint(self, trainer, module, checkpoint):
        self.timeline.event("checkpoint", epoch=trainer.current_epoch, step=trainer.global_step)

    def on_validation_start(self, trainer, module):
        if not trainer.sanity_checking:
            self.timeline.event("validation", epoch=trainer.current_epoch)

    def on_test_start(self, trainer, module):
        self.timeline.event("test")

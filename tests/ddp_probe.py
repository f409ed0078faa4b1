"""Run by test_ddp.py as a script (Lightning's DDP launcher starts rank 1 by rerunning it):
train a head with 2 CPU processes (gloo) and record which utterances each rank trained on."""

import json
import os
import sys
from pathlib import Path

import lightning as L

from downstream.datamodule import DataConfig
from downstream.tasks import TaskConfig
from downstream.train import train_and_evaluate
from upstream_quant.loading import load_upstream


class Record(L.Callback):
    def __init__(self, out: Path, task: str):
        self.out, self.task, self.ids = out, task, []

    def on_train_batch_start(self, trainer, module, batch, idx):
        self.ids.append([u.id for u in batch["utterances"]])

    def on_train_end(self, trainer, module):
        (self.out / f"{self.task}-rank{trainer.global_rank}.json").write_text(json.dumps(self.ids))


def main(task: str, root: str, out: str) -> None:
    out_dir = Path(out)
    if task == "asr":
        data = DataConfig("librispeech", root, train=("train",), dev=("train",), test=("train",))
        cfg = TaskConfig(proj=16, hidden=16, lstm_layers=1, max_steps=4, batch_size=2, specaug=False, lr=1e-3)
    else:
        data = DataConfig("speech_commands", root)
        cfg = TaskConfig(task="ks", max_steps=4, batch_size=8, lr=1e-3)
    result = train_and_evaluate(load_upstream("fbank", device="cpu"), cfg, data, out_dir / f"work-{task}", device="cpu",
                                devices=2, progress=False, callbacks=[Record(out_dir, task)])
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    (out_dir / f"{task}-result-rank{rank}.json").write_text(json.dumps({"steps": result["steps"], "metrics": result["metrics"]}))


if __name__ == "__main__":
    main(*sys.argv[1:4])

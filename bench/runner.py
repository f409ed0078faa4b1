"""`bench run`: execute a suite's runs, one results row per finished run, resumable and shardable.

Rows go to ``STORE/<suite>/runs.jsonl``: by default ``runs/`` (the user's own store, not in git);
the committed reference run lives in ``results/`` and was made with ``--store results``.
A row is appended only when its run has finished, by rewriting the file atomically, so a run
killed at any moment (even SIGKILL) leaves either no row or a whole one; training itself
resumes from its last epoch checkpoint under ``STORE/<suite>/work/``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from upstream_quant.io import write_atomic

from .results import load_runs, runs_path
from .suites import RunSpec, Suite

DEFAULT_STORE = Path("runs")
# What can change a result: code, suites, packaging, shipped data and weights (not docs or outputs).
CODE_PATHS = ("*.py", "*.toml", "*.sh", "Makefile", "bench/data", "downstream/data", "upstream_quant/weights")


def code_version() -> dict:
    """Git commit (and whether tracked code, suites or shipped data differ from it; docs do not
    count) plus package versions."""
    import lightning
    import torch

    root = Path(__file__).resolve().parent.parent
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        s3prl = version("s3prl")
    except Exception:
        s3prl = None
    return {"git_commit": commit, "git_dirty": dirty, "torch": torch.__version__, "lightning": lightning.__version__,
            "s3prl": s3prl, "python": platform.python_version()}


def append_row(path: Path, row: dict) -> None:
    """Add one row by rewriting the whole file atomically (never a torn line)."""
    existing = path.read_text() if path.is_file() else ""
    if existing and not existing.endswith("\n"):
        existing += "\n"
    write_atomic(path, existing + json.dumps(row, sort_keys=True) + "\n")


class Runner:
    """Caches loaded and quantized upstreams and trained heads across the runs of one invocation."""

    def __init__(self, suite: Suite, store: Path, device: str | None = None, progress: bool = True):
        self.suite, self.store, self.device, self.progress = suite, Path(store), device, progress
        self.work = self.store / suite.name / "work"
        self._upstreams: dict[str, object] = {}
        self._quantized: dict[tuple, object] = {}

    # ---------------------------------------------------------------- pieces

    def data_config(self, run: RunSpec, table: dict | None = None):
        from downstream.datamodule import DataConfig

        cfg = dict(table if table is not None else run.data_config)
        cfg.pop("head_data", None)
        for key in ("train", "dev", "test"):
            if key in cfg:
                cfg[key] = tuple(cfg[key])
        try:
            return DataConfig(**cfg)
        except TypeError as exc:
            raise ValueError(f"{self.suite.path}: [data.{run.data}] has an unknown field ({exc})") from exc

    def task_config(self, run: RunSpec):
        from downstream import tasks

        sched = dict(run.schedule)
        preset = sched.pop("preset", "superb_asr" if run.task == "asr" else "superb_ks")
        if not hasattr(tasks, preset):
            raise ValueError(f"{self.suite.path}: [schedule.{run.task}] preset {preset!r} unknown (superb_asr, superb_ks, mini_asr)")
        try:
            return getattr(tasks, preset)().with_(seed=run.seed, **sched)
        except TypeError as exc:
            raise ValueError(f"{self.suite.path}: [schedule.{run.task}] has an unknown field ({exc})") from exc

    def upstream(self, name: str):
        from upstream_quant.loading import load_upstream

        if name not in self._upstreams:
            self._upstreams[name] = load_upstream(name, device=self.device)
        return self._upstreams[name]

    def calibration(self, run: RunSpec, count: int = 32, group: str = "all"):
        """Unlabelled calibration audio from the training split of the head's data: ``count``
        utterances drawn at random (seeded by the run), of one gender (F/M) or speaker when
        ``group`` says so."""
        import dataclasses

        import torch

        from downstream import audio

        data = self.data_config(run, self.suite.data_tables[run.head_data])
        if group in ("F", "M"):
            data = dataclasses.replace(data, gender=group)
        elif group != "all":
            data = dataclasses.replace(data, speakers=(group,))
        corpus = data.load("train")
        return [torch.from_numpy(audio.read(u.path)) for u in corpus.sample(count, seed=run.seed)]

    def quantized(self, run: RunSpec):
        key = (run.upstream, run.quant, run.head_data)
        if run.quant.method == "fp":
            return self.upstream(run.upstream)
        if run.quant.method == "mixed" and key not in self._quantized:
            from upstream_quant.mixed import mixed_precision

            q = run.quant
            model, report = mixed_precision(self.upstream(run.upstream), self.calibration(run, group=q.calib), q.budget_mb,
                                            order=q.order, clip=q.clip, act_bits=q.act_bits, seed=run.seed)
            model.mixed_report = report
            self._quantized[key] = model
        if run.quant.method == "qat" and key not in self._quantized:
            from upstream_quant.qat import QATConfig, train_qat
            from upstream_quant.upstream import pick_device

            q = run.quant
            config = QATConfig(method="binary" if q.bits == 1 else "uniform", bits=q.bits, steps=q.qat_steps, seed=run.seed)
            spec = RunSpec(run.suite, run.upstream, q, "qat", run.head_data, "qat", run.seed)
            device = pick_device(self.device)
            model, summary = train_qat(self.upstream(run.upstream), self.calibration(run, count=10**9), config,
                                       self.work / f"qat-{spec.config_hash}", accelerator="gpu" if device.type == "cuda" else "cpu",
                                       devices=1, progress=self.progress)
            model.qat_summary = summary
            self._quantized[key] = model
        if key not in self._quantized:
            from upstream_quant.quantize import quantize

            config = run.quant.config()
            needs_calib = run.quant.method == "gptq" or run.quant.clip == "cosine"
            calib = self.calibration(run) if needs_calib else None
            base = self.upstream(run.upstream)
            self._quantized[key] = quantize(base, config, calibration=calib, progress=False)
        return self._quantized[key]

    def head(self, run: RunSpec) -> tuple[str, dict]:
        """For ``reuse``: the head trained on the full-precision upstream (trained once, then shared)."""
        from downstream.train import train_and_evaluate

        table = self.suite.data_tables[run.head_data]
        fp = RunSpec(run.suite, run.upstream, type(run.quant)(), run.task, run.head_data, "retrain", run.seed,
                     run.schedule, table)
        work = self.work / fp.config_hash
        result = train_and_evaluate(self.upstream(run.upstream), self.task_config(fp), self.data_config(fp), work,
                                    device=self.device, progress=self.progress)
        return result["checkpoint"], result

    def cost(self, run: RunSpec, model=None) -> dict:
        from upstream_quant.accounting import cost_report

        report = getattr(model, "mixed_report", None)
        if report is not None:  # per-layer widths: sizes from the allocation (est_runtime not modelled)
            full = cost_report(run.upstream, 16)
            return {"storage_mb": None, "stored_mb": round(report["size_mb"], 3), "fp16_mb": round(full.storage_mb["fp16"], 3),
                    "est_runtime": None, "bit_widths": report["widths"]}

        report = cost_report(run.upstream, run.quant.bits if run.quant.method != "fp" else 16)
        return {"storage_mb": round(report.storage_mb["paper"], 3), "stored_mb": round(report.storage_mb["stored"], 3),
                "fp16_mb": round(report.storage_mb["fp16"], 3), "est_runtime": round(report.est_runtime["encoder"], 4)}

    # ---------------------------------------------------------------- one run

    def execute(self, run: RunSpec) -> dict:
        from downstream.train import evaluate, train_and_evaluate

        started = time.time()
        upstream = self.quantized(run)
        if run.protocol == "retrain":
            result = train_and_evaluate(upstream, self.task_config(run), self.data_config(run), self.work / run.config_hash,
                                        device=self.device, progress=self.progress)
        else:
            checkpoint, head = self.head(run)
            result = evaluate(upstream, checkpoint, self.data_config(run), device=self.device)
            result["head"] = {"dev_curve": head["dev_curve"], "steps": head["steps"], "best": head["metrics"]}
        return {
            "suite": run.suite,
            "config_hash": run.config_hash,
            "name": run.name,
            "config": run.config_name,
            "upstream": run.upstream,
            "method": run.quant.method,
            "bits": run.quant.bits,
            "quant": run.quant.label,
            "protocol": run.protocol,
            "task": run.task,
            "data": run.data,
            "seed": run.seed,
            "spec": run.as_dict(),
            **self.cost(run, upstream),
            "metrics": result["metrics"],
            "featurizer_weights": result["featurizer_weights"],
            "dev_curve": result.get("dev_curve"),
            "qat": getattr(upstream, "qat_summary", None),
            "train": {k: result.get(k) for k in ("steps", "epochs", "train_seconds", "train_utterances_per_second",
                                                 "upstream_seconds", "head_seconds", "feature_cache")},
            "wall_seconds": round(time.time() - started, 2),
            "device": str(result.get("device") or self.device or "auto"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **code_version(),
        }


def ensure_data(suite: Suite, progress: bool = True) -> None:
    """Build the synthetic corpora a suite names (``synth = {...}`` under ``[data.X]``) unless present."""
    from downstream.synth import DEFAULT_HELDOUT, DEFAULT_VOICES, SynthArgs, build

    for name, spec in suite.synth.items():
        spec = dict(spec)
        out = spec.pop("out", "data/synth")
        args = SynthArgs(kind=spec.pop("kind", name), minutes=float(spec.pop("minutes", 10)),
                         voices=tuple(spec.pop("voices", DEFAULT_VOICES)), heldout_voice=spec.pop("heldout_voice", DEFAULT_HELDOUT),
                         seed=int(spec.pop("seed", 0)), perturb=float(spec.pop("perturb", 0.1)))
        if spec:
            raise ValueError(f"{suite.path}: [data.{name}] synth has unknown field(s) {sorted(spec)}")
        build(out, args, progress=progress)


def run_suite(suite: Suite, runs: list[RunSpec], store: Path = DEFAULT_STORE, force: bool = False,
              device: str | None = None, progress: bool = True) -> dict:
    """Run what is not in the store yet; returns counts and failures (other runs go on after a failure)."""
    from tqdm import tqdm

    path = runs_path(suite.name, store)
    done = {row.get("config_hash") for row in load_runs(suite.name, store)}
    todo = [r for r in runs if force or r.config_hash not in done]
    runner = Runner(suite, store, device, progress)
    summary = {"total": len(runs), "skipped": len(runs) - len(todo), "finished": 0, "failed": []}
    started = time.time()
    bar = tqdm(todo, desc=f"suite {suite.name}", unit="run", disable=not progress, file=sys.stderr)
    for run in bar:
        bar.set_postfix_str(run.name)
        try:
            row = runner.execute(run)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one bad run must not cost the others; reported at the end
            if os.environ.get("BENCH_DEBUG"):
                raise
            summary["failed"].append((run.name, f"{type(exc).__name__}: {exc}"))
            continue
        if force:
            rows = [r for r in load_runs(suite.name, store) if r.get("config_hash") != run.config_hash]
            write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        append_row(path, row)
        summary["finished"] += 1
    summary["seconds"] = round(time.time() - started, 1)
    return summary

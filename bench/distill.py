"""`bench distill`: build a student upstream and write it with a reproducibility manifest."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def _corpus_args(folder: Path) -> dict | None:
    """The `bench data synth` arguments of a corpus folder (or of the kind folder above a split)."""
    for candidate in (folder, *folder.parents[:2]):
        if (candidate / "args.json").is_file():
            return json.loads((candidate / "args.json").read_text())
    return None


def run_distill(args: argparse.Namespace) -> int:
    import torch

    from upstream_quant.distill import DistillConfig, distill, stream_files, whisper_student
    from upstream_quant.io import check_output, write_atomic
    from upstream_quant.loading import load_upstream
    from upstream_quant.upstream import pick_device
    from upstream_quant.upstreams.whisper import save_whisper, sha256_file

    check_output(args.out)
    from upstream_quant.curves import check_logger

    check_logger(args.logger)
    device = pick_device(args.device)
    teacher = load_upstream(args.teacher, device="cpu")
    if teacher.architecture().get("family") != "whisper":
        raise ValueError(f"bench distill builds Whisper-family students; teacher {args.teacher!r} is not one")
    folders = [Path(f) for f in args.audio.split(",")]
    files = stream_files(args.audio, args.max_hours, args.seed)
    config = DistillConfig(
        student_layers=args.student_layers, teacher_layers=tuple(int(x) for x in args.teacher_layers.split(",")),
        lr=args.lr, steps=args.steps, batch_size=args.batch_size, crop_seconds=args.crop_seconds, seed=args.seed,
    )
    bad = [i for i in config.teacher_layers if not 0 <= i < teacher.num_hidden_states]
    if bad:
        raise ValueError(f"--teacher-layers {bad} out of range: {args.teacher} has hidden states 0..{teacher.num_hidden_states - 1}")
    torch.manual_seed(args.seed)
    student = whisper_student(teacher, config.student_layers, args.name)
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out.with_suffix(".work")
    print(f"distilling {args.name}: {sum(p.numel() for p in student.parameters()):,} parameters "
          f"(teacher {sum(p.numel() for p in teacher.parameters()):,}), {len(files)} files streamed from disk, "
          f"{config.steps} steps on {device}", file=sys.stderr)
    result = distill(student, teacher, files, config, work, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                     logger=args.logger)
    save_whisper(result.student, out, metadata={"teacher": args.teacher})
    manifest = {
        "name": args.name,
        "command": "bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith("bench") else None,
        "teacher": args.teacher,
        "config": config.__dict__ | {"teacher_layers": list(config.teacher_layers)},
        "audio": [str(f) for f in folders],
        "corpus_args": {str(f): _corpus_args(f) for f in folders},
        "utterances": len(files),
        "steps": result.steps,
        "final_loss": round(result.final_loss, 4),
        "loss_curve": [round(x, 4) for x in result.losses[:: max(1, len(result.losses) // 50)]],
        "train_seconds": round(result.seconds, 1),
        "parameters": sum(p.numel() for p in result.student.parameters()),
        "device": str(device),
        "torch": torch.__version__,
        "sha256": sha256_file(out),
    }
    write_atomic(out.with_suffix(".json"), json.dumps(manifest, indent=1))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB), final loss {result.final_loss:.4f} after {result.steps} steps "
          f"in {result.seconds / 60:.1f} min", file=sys.stderr)
    return 0

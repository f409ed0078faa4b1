"""Probe: one quantized Whisper tiny.en, judged end to end by its own decoder, outside a suite.

The ablations behind docs/quantization.md "Two and three bits on a real decoder" that a suite
row cannot express (suites always calibrate a decoder's model on the windows it reads):
calibration audio unpadded or padded to Whisper's 30 s window, digits or read sentences, more
calibration utterances, QAT schedules. Prints one JSON line: WER (%) on the held-out voice's
passages (`--test unseen`, the default: 62 passages, 3,336 words, of text no calibration or
training audio reads; `--test read`: `mini`'s 39 passages, 1,961 words, of the sentences the
training audio is cut from), seconds to quantize and to evaluate. One calibration draw (seed
0), no interval: a probe, not a result; the suite rows (`bench run mini-ptq`) are the results.

    python scripts/e2e_probe.py --quant gptq:3:g64:asym --calib digits --no-window   # the old default
    python scripts/e2e_probe.py --quant gptq:3:rot                                   # as the suites do it
    python scripts/e2e_probe.py --qat 40 --bits 2 --group-size 64 --asym --rot --from-gptq --lr 5e-5 --scale-lr 1e-5
    python scripts/e2e_probe.py --qat 40 --bits 2 --group-size 64 --asym --rot --from-gptq --loss decoder \
        --pack 28 --learn scales --scale-lr 5e-3                                     # QAT through the decoder

The corpora are `bench run mini-ptq`'s (data/synth/unseen, data/synth/passages, data/synth/sentences, data/synth/digits).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jiwer
import torch
import torch.nn.functional as F

from bench.suites import QuantSpec
from downstream import audio, text
from downstream.librispeech import load_librispeech
from upstream_quant import load_upstream
from upstream_quant.calibration import pad_to_window
from upstream_quant.quantize import quantize

DATA = Path("data/synth")
TEST_SETS = {"unseen": "unseen", "read": "passages"}  # the suite's table -> its synth folder
CALIBRATION = {"sentences": DATA / "sentences", "digits": DATA / "digits"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quant", default="fp", help="a suite token of a quantize() method or mixed:...:gptq")
    ap.add_argument("--calib", default="sentences", choices=sorted(CALIBRATION))
    ap.add_argument("--test", default="unseen", choices=sorted(TEST_SETS), help="the held-out voice's passages to score")
    ap.add_argument("--count", type=int, default=32, help="calibration utterances")
    ap.add_argument("--no-window", action="store_true", help="calibrate on the utterances as they are, not padded to 30 s")
    ap.add_argument("--qat", type=int, default=0, metavar="STEPS", help="QAT instead of --quant, on the training audio")
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--rot", action="store_true")
    ap.add_argument("--from-gptq", action="store_true")
    ap.add_argument("--from-recon", type=int, default=0, metavar="STEPS",
                    help="QAT from block reconstruction's model (GPTQ, then STEPS steps a block) instead of GPTQ's")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--scale-lr", type=float, default=1e-3)
    ap.add_argument("--loss", default="states", help="QAT's target: states (hidden states) or decoder (the decoder's outputs)")
    ap.add_argument("--crop", type=float, default=4.0, help="QAT crop seconds")
    ap.add_argument("--learn", default="all", choices=["all", "scales", "scales+float"], help="QAT: what learns")
    ap.add_argument("--pack", type=float, default=None, help="QAT: utterances in a row per item, up to this many seconds")
    ap.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"], help="QAT: learning rates decayed or not")
    ap.add_argument("--fixed", action="store_true", help="QAT: each item the same every epoch (the teacher's work memoized)")
    a = ap.parse_args()
    torch.manual_seed(0)
    up = load_upstream("whisper_tiny_en", device="cpu")
    window = None if a.no_window else up.max_samples
    split = load_librispeech(CALIBRATION[a.calib], ["train"])
    calibration = lambda: pad_to_window(split.waveforms(a.count, seed=0), window)  # noqa: E731
    began = time.time()
    if a.qat:
        model = qat(up, a, [u.path for u in split.utterances], calibration, window)
    elif a.quant == "fp":
        model = up
    elif a.quant.startswith("mixed:"):
        from upstream_quant.methods.mixed import mixed_precision

        spec = QuantSpec.parse(a.quant)
        model, _ = mixed_precision(up, calibration(), spec.budget_mb, budget_bits=spec.budget_bits, rounding="gptq",
                                   group_size=spec.group_size, symmetric=spec.symmetric is not False,
                                   rotate=bool(spec.rotate), layer_coverage="transformer")
    else:
        spec = QuantSpec.parse(a.quant)
        model = quantize(up, spec.config(), calibration=calibration() if spec.calibrates else None, progress=False)
    quantize_s = time.time() - began
    print(json.dumps({"quant": a.quant, "qat_steps": a.qat, "loss": a.loss, "pack": a.pack, "learn": a.learn, "lr_schedule": a.lr_schedule, "fixed": a.fixed, "lr": a.lr,
                      "scale_lr": a.scale_lr, "calib": a.calib, "window": window is not None,
                      "count": a.count, "test": a.test, "wer": round(wer(model, up, a.test), 2), "quantize_s": round(quantize_s, 1),
                      "eval_s": round(time.time() - began - quantize_s, 1)}))


def qat(up, a, files: list, calibration, window: int | None):
    from upstream_quant.methods.gptq import GPTQConfig
    from upstream_quant.methods.qat import QATConfig, method_for, train_qat

    shape = {"group_size": a.group_size, "symmetric": not a.asym, "rotate": a.rot}
    config = QATConfig(method=method_for(a.bits, not a.asym), bits=a.bits, steps=a.qat, batch_size=a.batch_size,
                       lr=a.lr, scale_lr=a.scale_lr, window=window, loss=a.loss, crop_seconds=a.crop,
                       pack_seconds=a.pack, learn=a.learn, lr_schedule=a.lr_schedule,
                       fixed_items=a.fixed, **shape)
    start = None
    if a.from_recon:
        from upstream_quant.methods.recon import ReconConfig

        start = quantize(up, ReconConfig(bits=a.bits, steps=a.from_recon, **shape), calibration=calibration(), progress=False)
    elif a.from_gptq:
        start = quantize(up, GPTQConfig(bits=a.bits, **shape), calibration=calibration(), progress=False)
    with tempfile.TemporaryDirectory() as work:
        model, summary = train_qat(up, files, config, work, accelerator="cpu", devices=1, progress=False, num_workers=1,
                                   start=start)
    print(json.dumps(summary | {"loss_curve": [round(x, 3) for x in summary["loss_curve"]]}))
    return model


def transcripts(model, up, utterances) -> list[str]:
    """Each utterance padded to the decoder's 30 s window, encoded by ``model`` and decoded greedily
    by ``up``'s full-precision decoder, in the transcripts' spelled form."""
    decoder, window = up.text_decoder(), up.max_samples
    hyps = []
    with torch.inference_mode():
        for i in range(0, len(utterances), 10):
            batch = utterances[i:i + 10]
            wavs = [torch.from_numpy(audio.read(u.path, start=u.offset, frames=u.frames)) for u in batch]
            x = torch.stack([F.pad(w, (0, window - w.shape[0])) for w in wavs])
            states, _ = model(x, torch.full((len(batch),), window))
            hyps += [text.spoken(h) for h in decoder.transcribe(states[-1])]
    return hyps


def wer(model, up, test: str = "unseen") -> float:
    """Corpus WER of the held-out voice's passages of one test set."""
    utterances = load_librispeech(DATA / TEST_SETS[test], ["test-voice"]).utterances
    return 100 * jiwer.wer([u.transcript for u in utterances], transcripts(model, up, utterances))


if __name__ == "__main__":
    main()

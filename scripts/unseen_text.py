"""Do the end-to-end rows' QAT models gain from having heard the test passages' sentences?

The e2e rows' unlabelled training and calibration audio (``sentences/train``: 165 sentences read by
the training voices) and their test set (``passages/test-voice``: all 236 sentences of
``downstream/data/sentences.txt`` read in groups by the held-out voice) share text: every training
sentence is in some test passage. No transcript is read in training, but QAT through the decoder
learns to reproduce the full-precision model's own transcripts of those sentences. This scores
full precision and stored models on ``sentences/test-voice`` (the same held-out voice reading the
sentences no training or calibration audio holds) and prints each model's WER and its paired
difference from full precision there, to set beside the same difference on the passages
(``bench table mini-ptq``).

    python scripts/unseen_text.py results/mini-ptq/work/models/whisper_tiny_en-qat2-s85-*-p28-????????????????.safetensors
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.stats import Scores, interval, paired
from downstream.librispeech import load_librispeech
from downstream.metrics import word_edits
from upstream_quant import load_upstream
from upstream_quant.packed import load_packed
from e2e_probe import transcripts  # scripts/ is on the path when a script here runs


def scores(model, fp, utterances) -> tuple[np.ndarray, np.ndarray]:
    """Word errors and reference words per utterance: ``model``'s encoder, ``fp``'s decoder, each
    utterance padded to the decoder's 30 s window."""
    units = np.array(word_edits([u.transcript for u in utterances], transcripts(model, fp, utterances)), float)
    return units[:, 0], units[:, 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="packed files; those differing only in their run key are one row's seeds")
    ap.add_argument("--split", default="data/synth/sentences:test-voice", help="CORPUS:SPLIT of unseen text")
    a = ap.parse_args()
    root, split = a.split.rsplit(":", 1)
    utterances = load_librispeech(Path(root), [split]).utterances
    ids = tuple(u.id for u in utterances)
    print(f"{root} {split}: {len(utterances)} utterances, {sum(len(u.transcript.split()) for u in utterances)} words")
    runs = defaultdict(list)
    for path in a.models:
        runs[re.sub(r"-[0-9a-f]{16}\.safetensors$", "", Path(path).name)].append(path)
    fp_model = load_upstream("whisper_tiny_en", device="cpu").eval()
    num, den = scores(fp_model, fp_model, utterances)
    fp = Scores((0,), ids, num[None], den[None], metric="wer")
    print(f"fp: {interval(fp).value:.2f}")
    for label, paths in sorted(runs.items()):
        per = [scores(load_packed(p, device="cpu").eval(), fp_model, utterances) for p in sorted(paths)]
        s = Scores(tuple(range(len(per))), ids, np.stack([n for n, _ in per]), np.stack([d for _, d in per]), metric="wer")
        ci, d = interval(s), paired(s, fp, pair_seeds=False)
        print(f"{label}: {ci.value:.2f} [{ci.low:.2f}, {ci.high:.2f}] over {len(per)} model(s) "
              f"(per model {', '.join(f'{v:.2f}' for v in s.per_seed)}); vs fp {d.value:+.2f} [{d.low:+.2f}, {d.high:+.2f}]")


if __name__ == "__main__":
    main()

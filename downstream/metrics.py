"""Per-utterance scores: every test metric is a ratio of sums (edits over reference words, correct
over total), so a row that keeps each utterance's (numerator, denominator) can recompute its
metric exactly and resample it (bootstrap confidence intervals) without rerunning anything."""

from __future__ import annotations

from typing import Sequence

import jiwer

Units = list[tuple[int, int]]  # one (numerator, denominator) per utterance


def _edits(output) -> Units:
    """(substitutions + deletions + insertions, reference length) per sentence of a jiwer output."""
    out = []
    for chunks, ref in zip(output.alignments, output.references):
        edits = sum((c.hyp_end_idx - c.hyp_start_idx) if c.type == "insert" else (c.ref_end_idx - c.ref_start_idx)
                    for c in chunks if c.type != "equal")
        out.append((int(edits), len(ref)))
    return out


def word_edits(refs: Sequence[str], hyps: Sequence[str]) -> Units:
    """Word edits and reference words per utterance (jiwer's alignment; their sums give its WER)."""
    return _edits(jiwer.process_words(list(refs), list(hyps))) if refs else []


def char_edits(refs: Sequence[str], hyps: Sequence[str]) -> Units:
    """Character edits and reference characters per utterance (jiwer's CER, summed)."""
    return _edits(jiwer.process_characters(list(refs), list(hyps))) if refs else []


def correct(flags: Sequence[bool]) -> Units:
    """(1, 1) for a right answer, (0, 1) for a wrong one: accuracy as a ratio of sums."""
    return [(int(bool(f)), 1) for f in flags]


def ratio(units: Units) -> float:
    """The metric in percent: 100 x sum of numerators / sum of denominators."""
    den = sum(d for _, d in units)
    return 100.0 * sum(n for n, _ in units) / den if den else 0.0


def totals(units: dict[str, Units]) -> dict[str, float]:
    """Each metric from its per-utterance scores."""
    return {name: ratio(u) for name, u in units.items()}

"""Per-unit scores: a row keeps each test unit's (numerator, denominator) pair, so it can recompute
its metric exactly and resample it (bootstrap confidence intervals) without rerunning anything.

Most metrics are a ratio of sums over utterances (edits over reference words, correct over
total). A metric that is not (a verification trial list's equal error rate, a term list's
MTWV) keeps one pair per unit all the same, (score, 1 target or 0), and registers its `statistic`
here: a function of the pairs, of per-unit weights (what the bootstrap varies) and of each unit's
group (its cluster: the spoken term a detection is of)."""

from __future__ import annotations

from typing import Callable, Sequence

import jiwer
import numpy as np

Units = list[tuple[float, float]]  # one (numerator, denominator) per unit (utterance or trial)
# metric -> f(num (n,), den (n,), weights (replicates, n), groups (n,) ints or None) -> the metric
# in each replicate (replicates,)
Statistic = Callable[..., np.ndarray]
STATISTICS: dict[str, Statistic] = {}


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


def weighted_ratio(num: np.ndarray, den: np.ndarray, weights: np.ndarray, groups=None) -> np.ndarray:
    """100 x weighted sum of numerators / weighted sum of denominators, per row of weights."""
    return 100 * (weights @ num) / np.maximum(weights @ den, 1e-12)


def statistic(metric: str) -> Statistic:
    """How ``metric`` is computed from its units: registered, or a ratio of sums."""
    return STATISTICS.get(metric, weighted_ratio)


def register_statistic(metric: str, fn: Statistic) -> None:
    if STATISTICS.get(metric, fn) is not fn:
        raise ValueError(f"metric {metric!r} has a statistic already")
    STATISTICS[metric] = fn


def group_codes(labels) -> np.ndarray | None:
    """Integer codes of per-unit group labels (None stays None)."""
    if labels is None:
        return None
    index: dict = {}
    return np.array([index.setdefault(x, len(index)) for x in labels])


def value(metric: str, units: Units, groups=None) -> float:
    """The metric on all its units, each counted once."""
    if not units:
        return 0.0
    num, den = (np.array(x, dtype=float) for x in zip(*units))
    return float(statistic(metric)(num, den, np.ones((1, len(num))), group_codes(groups))[0])


def totals(units: dict[str, Units], groups=None) -> dict[str, float]:
    """Each metric from its per-unit scores (``groups``: each unit's group, for the metrics that need it)."""
    return {name: value(name, u, groups) for name, u in units.items()}


# ---------------------------------------------------------------- verification trials
# Written with numpy, not sklearn's roc_curve: the bootstrap needs the error rates of a thousand
# reweighted trial lists at once, which one sort and a cumulative sum per replicate give.

def _error_rates(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Miss and false-alarm rates (replicates, thresholds + 1) as the threshold falls past each
    trial, highest score first: column 0 accepts nothing, the last accepts everything."""
    order = np.argsort(-scores, kind="stable")
    w = weights[:, order]
    t = targets[order]
    hits = np.cumsum(w * t, axis=1)
    alarms = np.cumsum(w * (1 - t), axis=1)
    n_target = np.maximum(hits[:, -1:], 1e-12)
    n_other = np.maximum(alarms[:, -1:], 1e-12)
    zero = np.zeros((w.shape[0], 1))
    miss = 1 - np.concatenate([zero, hits], axis=1) / n_target
    fa = np.concatenate([zero, alarms], axis=1) / n_other
    return miss, fa


def eer(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray, groups=None) -> np.ndarray:
    """Equal error rate in percent: where the miss and false-alarm curves cross, linearly
    interpolated between the two thresholds around the crossing (s3prl interpolates its ROC the
    same way)."""
    miss, fa = _error_rates(np.asarray(scores, float), np.asarray(targets, float), np.atleast_2d(weights))
    gap = miss - fa  # falls from +1 (accept nothing) to -1 (accept everything)
    k = np.argmax(gap <= 0, axis=1)  # first threshold where false alarms reach misses
    rows = np.arange(len(k))
    prev = np.maximum(k - 1, 0)
    g0, g1 = gap[rows, prev], gap[rows, k]
    frac = np.where(g0 != g1, g0 / np.where(g0 != g1, g0 - g1, 1), 0.0)
    at = lambda curve: curve[rows, prev] + frac * (curve[rows, k] - curve[rows, prev])  # noqa: E731
    return 100 * (at(miss) + at(fa)) / 2


P_TARGET = 0.01  # minDCF's prior of a target trial (NIST SRE 2008-10; VoxCeleb1 reports it too)


def min_dcf(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray, groups=None,
            p_target: float = P_TARGET) -> np.ndarray:
    """Minimum normalised detection cost (cost of a miss = cost of a false alarm = 1), in [0, 1]
    as NIST and VoxCeleb report it (not a percentage)."""
    miss, fa = _error_rates(np.asarray(scores, float), np.asarray(targets, float), np.atleast_2d(weights))
    cost = (miss * p_target + fa * (1 - p_target)) / min(p_target, 1 - p_target)
    return cost.min(axis=1)


def trials(scores: Sequence[float], targets: Sequence[int]) -> Units:
    """A trial list as units: (score, 1 same speaker or 0) per trial."""
    return [(float(s), int(t)) for s, t in zip(scores, targets)]



# ---------------------------------------------------------------- spoken term detection

BETA = 999.9  # TWV's false-alarm weight: C/V = 0.1 and P(term) = 1e-4 (NIST STD 2006, QUESST 2014)


def mtwv(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray, groups=None, beta: float = BETA) -> np.ndarray:
    """Maximum term-weighted value over one global threshold: TWV = 1 - mean over terms (with at
    least one true occurrence) of P_miss + beta x P_false-alarm, detection per (term, document)
    as QUESST 2014 scores it. ``groups``: each unit's term; a term's weight is its units' weight.
    Hand-written for the same reason as `eer`: a thousand reweighted term lists at once. Each
    unit moves TWV by a fixed amount once the threshold falls below its score (a hit by
    1/targets of its term, a false alarm by -beta/non-targets), so one sort and a cumulative sum
    give TWV at every threshold."""
    scores, targets = np.asarray(scores, float), np.asarray(targets, float)
    weights = np.atleast_2d(weights)
    groups = np.zeros(len(scores), dtype=int) if groups is None else np.asarray(groups)
    n_groups = groups.max() + 1 if len(groups) else 0
    hits = np.bincount(groups, weights=targets, minlength=n_groups)
    others = np.bincount(groups, weights=1 - targets, minlength=n_groups)
    counted = hits > 0  # a term that never occurs has no miss rate: left out, as NIST does
    step = np.where(targets == 1, 1 / np.maximum(hits[groups], 1), -beta / np.maximum(others[groups], 1))
    step = step * counted[groups]
    # a term's weight in the replicate: the weight of its units (equal within a cluster draw)
    first = np.unique(groups, return_index=True)[1]
    term_weight = np.zeros((weights.shape[0], n_groups))
    term_weight[:, groups[first]] = weights[:, first]
    total = (term_weight * counted).sum(1)
    order = np.argsort(-scores, kind="stable")
    gain = np.cumsum(weights[:, order] * step[order], axis=1)
    # only thresholds between distinct scores: the last unit of each run of tied scores
    ends = np.append(np.diff(scores[order]) != 0, True)
    best = np.maximum(gain[:, ends].max(axis=1), 0.0)  # a threshold above every score gives TWV 0
    return best / np.maximum(total, 1e-12)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray, groups=None) -> np.ndarray:
    """Mean over terms (with at least one true occurrence) of the average precision of the
    term's search utterances ranked by score (ties in input order), in [0, 1]. Unlike MTWV it
    needs no threshold shared by every term and no corpus the size of QUESST's (where a false
    alarm costs beta / ~12,000 non-targets, not beta / ~150): on a small stand-in corpus MTWV is
    0 for any ranking short of perfect, while MAP still says how well each query finds its term.
    ``groups``: each unit's term; a term's weight in a replicate is its units' weight."""
    scores, targets = np.asarray(scores, float), np.asarray(targets, float)
    weights = np.atleast_2d(weights)
    groups = np.zeros(len(scores), dtype=int) if groups is None else np.asarray(groups)
    n_groups = groups.max() + 1 if len(groups) else 0
    precision, counted, first = np.zeros(n_groups), np.zeros(n_groups, dtype=bool), np.zeros(n_groups, dtype=int)
    for g in range(n_groups):
        idx = np.flatnonzero(groups == g)
        hits = targets[idx][np.argsort(-scores[idx], kind="stable")]
        if len(idx) and hits.sum() > 0:
            counted[g], first[g] = True, idx[0]
            precision[g] = (np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits).sum() / hits.sum()
    term_weight = weights[:, first] * counted
    return (term_weight @ precision) / np.maximum(term_weight.sum(1), 1e-12)


# The metrics that are not ratios of sums, registered here rather than by their tasks: a store's
# rows are read (tables, comparisons) without importing any task module.
for _name, _fn in (("eer", eer), ("min_dcf", min_dcf), ("mtwv", mtwv), ("map", mean_average_precision)):
    register_statistic(_name, _fn)

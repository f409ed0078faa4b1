"""Uncertainty of a table cell: bootstrap confidence intervals over test utterances and seeds.

Each row keeps its test units' (numerator, denominator) pairs, so a cell's interval is recomputed
from the store. Most metrics are a ratio of sums over utterances; a metric that is not (a trial
list's equal error rate) registers its own statistic in `downstream.metrics`, which the
resampling calls with the replicate's weights.
A replicate resamples the test utterances (one multinomial draw, shared by every configuration
compared on them: a *paired* bootstrap, Bisani & Ney 2004) by their reference text: utterances
that read the same text (a phrasing read several times by the test speaker) are drawn together,
as one cluster, since they are not independent evidence. Where a configuration ran several
seeds, resamples its seeds too (the seed's spread is part of the uncertainty: a head trained on
another seed is another draw of the same configuration). Two configurations that ran the same
seeds (a reuse row and the full-precision row whose heads it reuses) share the seed draw.
Written with numpy rather than scipy.stats.bootstrap because the paired, two-level resampling of
ratios of sums over a shared utterance draw is not what scipy's one-sample API offers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from downstream import metrics

DEFAULT_RESAMPLES = 1000
MIN_RESAMPLES = 100
SEED = 0  # tables are reproducible: the same store gives the same intervals
LEVEL = 0.95


def check_resamples(resamples: int) -> int:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < MIN_RESAMPLES:
        raise ValueError(f"--bootstrap {resamples!r}: at least {MIN_RESAMPLES} resamples (a 95 % interval from fewer "
                         f"is mostly noise); the default is {DEFAULT_RESAMPLES}")
    return resamples


@dataclass(frozen=True)
class Scores:
    """One configuration's per-utterance scores for one metric: seeds x utterances."""

    seeds: tuple[int, ...]
    ids: tuple[str, ...]
    num: np.ndarray  # (seeds, utterances)
    den: np.ndarray
    clusters: tuple[str, ...] | None = None  # per utterance: what is resampled together (its reference text)
    metric: str = ""  # its name: how the units combine (`downstream.metrics.statistic`)
    # `weighted` per bootstrap draw (keyed by the draw's identity): a table compares each
    # configuration with several references on the same draw, and a trial-list statistic (EER) on
    # a thousand replicates is the slow part of a table
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_rows(cls, rows: list[dict], metric: str) -> "Scores | None":
        """From results rows of one configuration (one per seed); None when a row lacks
        per-utterance scores (rows written before they were kept) or the rows' utterances differ."""
        if not rows:
            return None
        tables = []
        for row in sorted(rows, key=lambda r: r["seed"]):
            per = row.get("per_utterance")
            if not per or metric not in per.get("scores", {}):
                return None
            tables.append((row["seed"], dict(zip(per["ids"], per["scores"][metric]))))
        ids = sorted(tables[0][1])
        if any(sorted(t) != ids for _, t in tables):
            return None
        num = np.array([[t[i][0] for i in ids] for _, t in tables], dtype=float)
        den = np.array([[t[i][1] for i in ids] for _, t in tables], dtype=float)
        per = rows[0]["per_utterance"]
        refs = dict(zip(per["ids"], per["refs"])) if per.get("refs") else None
        return cls(tuple(s for s, _ in tables), tuple(ids), num, den, tuple(refs[i] for i in ids) if refs else None, metric)

    def weighted(self, weights: np.ndarray) -> np.ndarray:
        """The metric of each seed under each row of unit weights: (replicates, seeds)."""
        hit = self._memo.get(id(weights))
        if hit is not None and hit[0] is weights:
            return hit[1]
        stat = metrics.statistic(self.metric)
        groups = metrics.group_codes(self.clusters)
        out = np.stack([stat(self.num[k], self.den[k], weights, groups) for k in range(len(self.seeds))], axis=1)
        if not weights.flags.writeable:  # a shared draw (`_draw`), which nothing can change
            out.flags.writeable = False
            self._memo[id(weights)] = (weights, out)
        return out

    @property
    def per_seed(self) -> np.ndarray:
        """The metric of each seed (in percent for a ratio)."""
        return self.weighted(np.ones((1, len(self.ids))))[0]

    def restrict(self, ids: list[str]) -> "Scores":
        if tuple(ids) == self.ids:
            return self
        index = {u: k for k, u in enumerate(self.ids)}
        where = [index[i] for i in ids]
        clusters = None if self.clusters is None else tuple(self.clusters[k] for k in where)
        return Scores(self.seeds, tuple(ids), self.num[:, where], self.den[:, where], clusters, self.metric)


def scores_by_config(rows, metric: str) -> dict[str, "Scores | None"]:
    """config -> its `Scores` of `metric`, from a results frame (`bench.results.runs_frame`) of
    one task and data; None for a config whose rows lack per-utterance scores."""
    return {c: Scores.from_rows(g.to_dict("records"), metric) for c, g in rows.groupby("config", sort=False)}


def _utterance_weights(rng: np.random.Generator, n: int, resamples: int,
                       clusters: tuple[str, ...] | None = None) -> np.ndarray:
    """How many times each utterance is drawn in each replicate: (resamples, n). With clusters,
    the clusters are drawn (as many as there are) and each drawn cluster brings all its utterances."""
    if clusters is None:
        return rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(float)
    names = sorted(set(clusters))
    index = {c: k for k, c in enumerate(names)}
    of = np.array([index[c] for c in clusters])
    drawn = rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=resamples).astype(float)
    return drawn[:, of]


_DRAWS: dict = {}  # (seed, units, resamples, clusters) -> (weights, the generator's state after drawing them)


def _draw(seed: int, n: int, resamples: int, clusters: tuple[str, ...] | None) -> tuple[np.ndarray, np.random.Generator]:
    """`_utterance_weights` from a generator seeded with ``seed``, and that generator after the
    draw (for the seed draws that follow). The same arguments give the same read-only array, so
    that every configuration compared on it computes its replicates once (`Scores.weighted`)."""
    key = (seed, n, resamples, clusters)
    if key not in _DRAWS:
        rng = np.random.default_rng(seed)
        weights = _utterance_weights(rng, n, resamples, clusters)
        weights.flags.writeable = False
        if len(_DRAWS) >= 32:
            _DRAWS.clear()
        _DRAWS[key] = (weights, rng.bit_generator.state)
    weights, state = _DRAWS[key]
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return weights, rng


def _replicates(s: Scores, weights: np.ndarray, seed_draw: np.ndarray) -> np.ndarray:
    """The metric (mean over the drawn seeds) in each replicate."""
    return np.take_along_axis(s.weighted(weights), seed_draw, axis=1).mean(1)


def _seed_draw(rng: np.random.Generator, k: int, resamples: int) -> np.ndarray:
    return rng.integers(0, k, size=(resamples, k)) if k > 1 else np.zeros((resamples, 1), dtype=int)


@dataclass(frozen=True)
class Interval:
    value: float  # the mean over seeds of the metric on all utterances
    low: float
    high: float


def interval(s: Scores, resamples: int = DEFAULT_RESAMPLES, seed: int = SEED) -> Interval:
    """The 95 % bootstrap interval of a configuration's metric (utterances and seeds resampled)."""
    weights, rng = _draw(seed, len(s.ids), resamples, s.clusters)
    reps = _replicates(s, weights, _seed_draw(rng, len(s.seeds), resamples))
    lo, hi = np.percentile(reps, [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)])
    return Interval(float(s.per_seed.mean()), float(lo), float(hi))


@dataclass(frozen=True)
class Difference(Interval):
    """``value`` = metric of a minus metric of b; significant when the interval leaves out 0."""

    utterances: int = 0

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def paired(a: Scores, b: Scores, resamples: int = DEFAULT_RESAMPLES, seed: int = SEED,
           pair_seeds: bool = True) -> Difference | None:
    """The 95 % bootstrap interval of a - b on the utterances both were tested on (the same draw
    for both); None when they share none. ``pair_seeds``: where both ran the same seeds, draw
    them together (right when seed s is one trained piece both use, as a reuse row and the
    full-precision row whose head it evaluates); False draws each side's seeds on its own (two
    machines: seed s trains another head on each, so the pairing would hide the seed's spread)."""
    common = sorted(set(a.ids) & set(b.ids))
    if not common:
        return None
    a, b = a.restrict(common), b.restrict(common)
    weights, rng = _draw(seed, len(common), resamples, a.clusters if a.clusters is not None else b.clusters)
    draw_a = _seed_draw(rng, len(a.seeds), resamples)
    draw_b = draw_a if pair_seeds and a.seeds == b.seeds else _seed_draw(rng, len(b.seeds), resamples)
    diff = _replicates(a, weights, draw_a) - _replicates(b, weights, draw_b)
    lo, hi = np.percentile(diff, [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)])
    return Difference(float(a.per_seed.mean() - b.per_seed.mean()), float(lo), float(hi), len(common))

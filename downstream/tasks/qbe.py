"""QbE (SUPERB): query-by-example spoken term detection on QUESST 2014's English subset, s3prl's
quesst14_dtw expert; nothing is trained. Each hidden state is normalised per dimension over all
the audio, each (query, search utterance) pair is matched by subsequence DTW (asymmetric steps,
open begin and end, as s3prl runs dtw-python) on the cosine distance passed through exp(d) - 1 with each
query frame's row min-max normalised, the pair scored by minus its normalised DTW cost and each
query's scores standardised; the metric is the maximum term-weighted value (MTWV), with the mean
average precision (MAP) beside it. As SUPERB: every hidden state is tried, the one with the best
MTWV on the dev queries is chosen (ties, such as every layer at 0 on a small corpus, broken by
dev MAP), and the eval queries are reported at it (``config.layer`` fixes one instead). A test
unit is a (query, search utterance) pair, resampled by query."""

from __future__ import annotations

import numpy as np
import torch

from .. import metrics
from .. import quesst14  # noqa: F401  (registers its layout)
from ..features import FrozenUpstream
from .base import DownstreamTask, TaskConfig, TaskSpec, register_task

MIN_QUERY_FRAMES = 5  # s3prl scores a shorter query 0 against every utterance


def subsequence_dtw(dist: np.ndarray) -> np.ndarray:
    """dtw-python's ``normalizedDistance`` for step pattern ``asymmetric`` with open begin and end
    (each query frame advances one step while the utterance advances 0, 1 or 2 frames; the match
    starts and ends anywhere in the utterance; cost over the query's length). ``dist``: (query
    frames, ..., utterance frames), any batch axes between; returns the cost per batch entry.
    Written here as one vectorised row update per query frame over every utterance at once:
    dtw-python builds each pair's alignment in a separate call, 4x slower alone on the ~10^5
    pairs a model's layers give (tests/test_qbe.py checks the two agree)."""
    n = dist.shape[0]
    cost = dist[0].copy()
    for i in range(1, n):
        best = cost.copy()
        best[..., 1:] = np.minimum(best[..., 1:], cost[..., :-1])
        best[..., 2:] = np.minimum(best[..., 2:], cost[..., :-2])
        cost = dist[i] + best
    return cost.min(-1) / n


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def dtw_cost(query: np.ndarray, doc: np.ndarray) -> float:
    """Normalised cost of the best subsequence alignment of ``query`` inside ``doc``: s3prl's
    cosine_exp distance (scipy's cosine distance, as a product of unit rows: the same numbers,
    a BLAS call instead of scipy's per-pair loop), each query frame's row min-max normalised."""
    return float(batch_costs(query, [doc])[0])


DOC_CHUNK = 256  # utterances aligned at once: bounds the padded (query frames, utterances, frames) array


def batch_costs(query: np.ndarray, docs: list[np.ndarray]) -> np.ndarray:
    """`dtw_cost` of ``query`` against each of ``docs``, many utterances per array operation:
    the utterances are padded to one length (padding costs infinity, so no alignment uses it)
    and `subsequence_dtw` runs on all of them at once."""
    q = _unit_rows(query.astype(np.float64))
    out = np.empty(len(docs))
    order = np.argsort([len(d) for d in docs])  # similar lengths together: little padding
    for start in range(0, len(docs), DOC_CHUNK):
        idx = order[start: start + DOC_CHUNK]
        width = max(len(docs[k]) for k in idx)
        padded = np.zeros((len(idx), width, q.shape[1]))
        valid = np.zeros((len(idx), width), dtype=bool)
        for row, k in enumerate(idx):
            padded[row, : len(docs[k])] = _unit_rows(docs[k].astype(np.float64))
            valid[row, : len(docs[k])] = True
        dist = np.exp(np.clip(1 - (padded @ q.T).transpose(2, 0, 1), 0, 2)) - 1  # (query frames, docs, frames)
        low = np.where(valid, dist, np.inf).min(2, keepdims=True)
        high = np.where(valid, dist, -np.inf).max(2, keepdims=True)
        out[idx] = subsequence_dtw(np.where(valid, (dist - low) / np.clip(high - low, 1e-9, None), np.inf))
    return out


def detection_scores(queries: dict[str, np.ndarray], docs: dict[str, np.ndarray]) -> dict[tuple[str, str], float]:
    """(query, utterance) -> the query's standardised score (higher: more likely there)."""
    out = {}
    names, feats = list(docs), list(docs.values())
    for q, qf in queries.items():
        raw = -batch_costs(qf, feats) if len(qf) >= MIN_QUERY_FRAMES else np.zeros(len(feats))
        raw = (raw - raw.mean()) / max(raw.std(), 1e-9)
        out |= {(q, d): float(s) for d, s in zip(names, raw)}
    return out


class QbETask(DownstreamTask):
    metric_name, metric_mode = "mtwv", "max"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        self.layers = [upstream.layer_index(config.layer)] if config.layer is not None else list(range(upstream.num_hidden_states))
        self._reported: dict[tuple[str, str], float] = {}  # the chosen layer's scores, for `test_scored`
        self._truth: set[tuple[str, str]] = set()

    def predict(self, batch) -> list[tuple[str, str, list[np.ndarray]]]:
        """(utterance id, what it is, its hidden states) per utterance, fp16 on the CPU."""
        states, lengths = self.upstream(batch["wavs"], batch["lengths"])
        return [(u.id, u.split, [states[k][i, : int(n)].half().cpu().numpy() for k in self.layers])
                for i, (u, n) in enumerate(zip(batch["utterances"], lengths))]

    def on_test_epoch_end(self):
        truth = {(q, d) for _, q, d in self.trainer.datamodule.corpora["test"].trials or []}
        kinds = {uid: kind for uid, kind, _ in self._outputs}
        per_layer = []
        for k in range(len(self.layers)):
            feats = {uid: f[k].astype(np.float32) for uid, _, f in self._outputs}
            stacked = np.concatenate(list(feats.values()))
            mean, std = stacked.mean(0), np.clip(stacked.std(0), 1e-9, None)
            feats = {uid: (f - mean) / std for uid, f in feats.items()}
            docs = {u: f for u, f in feats.items() if kinds[u] == "doc"}
            scored = {}
            for kind in ("dev", "eval"):
                queries = {u: f for u, f in feats.items() if kinds[u] == kind}
                if queries:
                    scored[kind] = detection_scores(queries, docs)
            per_layer.append(scored)
        dev = [self._dev_values(s["dev"], truth) for s in per_layer]
        best = max(range(len(dev)), key=lambda k: dev[k])
        self._reported, self._truth = per_layer[best].get("eval", per_layer[best]["dev"]), truth
        super().on_test_epoch_end()
        self.log("test_dev_mtwv", dev[best][0])
        self.log("test_layer", float(self.layers[best]))

    def test_scored(self):
        """One unit per (query, search utterance) pair at the chosen layer, grouped by query."""
        pairs, units = self._units(self._reported, self._truth)
        return [f"{q}|{d}" for q, d in pairs], [q for q, _ in pairs], {"mtwv": units, "map": units}

    @staticmethod
    def _units(scored: dict[tuple[str, str], float], truth: set) -> tuple[list[tuple[str, str]], metrics.Units]:
        """The (query, utterance) pairs in order and their (score, 1 true or 0) units."""
        pairs = sorted(scored)
        return pairs, metrics.trials([scored[p] for p in pairs], [int(p in truth) for p in pairs])

    @classmethod
    def _dev_values(cls, scored: dict[tuple[str, str], float], truth: set) -> tuple[float, float]:
        """(MTWV, MAP) of one layer's dev detections: what chooses the layer, in that order."""
        pairs, units = cls._units(scored, truth)
        queries = [q for q, _ in pairs]
        return metrics.value("mtwv", units, queries), metrics.value("map", units, queries)


def superb_qbe() -> TaskConfig:
    """Nothing trained: the schedule only says which hidden state (None: the best on dev)."""
    return TaskConfig(task="qbe", batch_size=1, specaug=False, max_batch_seconds=60.0)


SPEC = register_task(TaskSpec(
    name="qbe", title="QbE", module=QbETask, metrics=("mtwv", "map"), axis_label="MTWV", layouts=("quesst14",),
    presets={"superb_qbe": superb_qbe}, trains_head=False))

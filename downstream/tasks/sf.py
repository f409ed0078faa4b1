"""SF (SUPERB): slot filling on audio SNIPS, s3prl's ctc expert with snips.yaml: CTC over SUPERB's
characters plus a begin and an end token per slot type (``B-artist PINK FLOYD E-artist``), the
ASR head (a projection and a BiLSTM stack), greedy decoding; slot-type F1 (per utterance, averaged:
the headline) and slot-value CER, scored as s3prl's metric.py does. The slot types are read from
the training labels and kept with the checkpoint (s3prl reads them from slots.txt)."""

from __future__ import annotations

import re

from rapidfuzz.distance import Levenshtein

from .. import metrics, text
from ..features import FrozenUpstream
from ..heads import ASRHead
from ..snips import OUTSIDE, tagged
from .base import TaskConfig, TaskSpec, register_task
from .ctc import CTCTask

_SLOT = re.compile(r"B-(\S+) (.+?) E-\1")
_MARKER = re.compile(r"\s*[BE]-\S+\s*")


def slots(tagged_text: str) -> dict[str, list[str]]:
    """Slot type -> its values in a tagged string (s3prl's metric.parse)."""
    out: dict[str, list[str]] = {}
    for slot, value in _SLOT.findall(re.sub(" +", " ", tagged_text)):
        out.setdefault(slot, []).append(_MARKER.sub(" ", value).strip())
    return out


def slot_type_f1(ref: str, hyp: str) -> float:
    """F1 of the slot types an utterance names (1 when neither names any), as s3prl's metric."""
    r, h = set(slots(ref)), set(slots(hyp))
    if not r and not h:
        return 1.0
    if not r or not h:
        return 0.0
    p, c = len(r & h) / len(h), len(r & h) / len(r)
    return 2 * p * c / (p + c) if p + c else 0.0


def slot_value_edits(ref: str, hyp: str) -> tuple[int, int]:
    """(character edits, reference characters) over an utterance's slot values: each reference
    value against the closest hypothesis value of its type, or against nothing (s3prl's metric)."""
    r, h = slots(ref), slots(hyp)
    edits = chars = 0
    for slot, values in r.items():
        for value in values:
            best = min((Levenshtein.distance(v, value) for v in h.get(slot, [])), default=len(value))
            edits, chars = edits + best, chars + len(value)
    return edits, chars


class SFTask(CTCTask):
    metric_name, metric_mode = "slot_type_f1", "max"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        self.slot_types = list(self.data_labels("slots", "slot types"))
        self.markers = [f"{e}-{s}" for s in self.slot_types for e in "BE"]
        self.vocab = (*text.VOCAB, *self.markers)
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.head = ASRHead(upstream.hidden_size, len(self.vocab), config.proj, config.hidden, config.lstm_layers, config.dropout)

    def reference(self, utterance) -> str:
        tags = [t if t in self.slot_types else OUTSIDE for t in utterance.label.split(" ")]  # a type training never saw
        return tagged(utterance.transcript.split(" "), tags)

    def targets(self, utterance) -> list[int]:
        """Characters, word separators between words, a marker token glued to its word."""
        ids: list[int] = []
        for k, item in enumerate(self.reference(utterance).split(" ")):
            if item in self.index and item not in text.VOCAB:
                ids.append(self.index[item])
                continue
            if ids and self.vocab[ids[-1]] in text.LETTERS:
                ids.append(self.index[text.WORD_SEP])
            ids += text.encode(item)
        return ids

    def decode(self, ids: list[int]) -> str:
        out = []
        for i in ids:
            token = self.vocab[i]
            out.append(f" {token} " if token in self.markers else " " if token == text.WORD_SEP else token)
        return re.sub(" +", " ", "".join(out)).strip()

    @staticmethod
    def unit_scores(pairs: list[tuple[str, str]]) -> dict[str, metrics.Units]:
        clean = [(_MARKER.sub(" ", r).strip(), re.sub(" +", " ", _MARKER.sub(" ", h)).strip()) for r, h in pairs]
        return {"slot_type_f1": [(slot_type_f1(r, h), 1) for r, h in pairs],
                "slot_value_cer": [slot_value_edits(r, h) for r, h in pairs],
                "wer": metrics.word_edits([r for r, _ in clean], [h for _, h in clean])}


def prepare(config: TaskConfig, train) -> TaskConfig:
    """The slot types of the training labels (sorted)."""
    types = sorted({t for u in train.utterances for t in u.label.split(" ") if t != OUTSIDE})
    return config.with_(labels={"slots": types})


def superb_sf() -> TaskConfig:
    """s3prl's snips.yaml: the ASR head (1024-dim projection, two BiLSTM layers of 1024, dropout
    0.2), Adam 1e-4, batch 32, 200k steps, SpecAugment."""
    return TaskConfig(task="sf", batch_size=32)


def mini_sf() -> TaskConfig:
    """CPU scale model, as mini_asr: one BiLSTM layer of 192, learning rate 3e-3, 400 steps on
    cached, layer-normed features."""
    return TaskConfig(task="sf", proj=192, hidden=192, lstm_layers=1, lr=3e-3, max_steps=400, batch_size=16,
                      max_batch_seconds=120.0, val_every_epochs=4, cache_features=True, cache_mb=1024, normalize=True)


SPEC = register_task(TaskSpec(
    name="sf", title="SF", module=SFTask, metrics=("slot_type_f1", "slot_value_cer", "wer"), axis_label="slot-type F1 (%)",
    layouts=("snips",), presets={"superb_sf": superb_sf, "mini_sf": mini_sf}, prepare=prepare))

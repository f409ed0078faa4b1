"""Fluent Speech Commands as it lies on disk (also the layout ``bench data synth --kind intents``
writes): ``ROOT/data/{train,valid,test}_data.csv`` with columns ``path, speakerId,
transcription, action, object, location`` (paths relative to ROOT; a leading index column, as
the release has, is ignored). SUPERB's IC task predicts the three slots."""

from __future__ import annotations

import csv
from pathlib import Path

from . import text
from .corpus import Corpus, DropReport, Utterance, readable, register_layout

SLOTS = ("action", "object", "location")
COLUMNS = ("path", "speakerId", "transcription", *SLOTS)
SPLITS = ("train", "valid", "test")
SLOT_SEP = "|"  # an utterance's label is its slots joined: "activate|lights|kitchen"


def intent(label: str) -> tuple[str, ...]:
    """The slot values of an utterance label."""
    return tuple(label.split(SLOT_SEP))


def load_fluent_commands(root: str | Path, splits: list[str]) -> Corpus:
    """Utterances of ``splits`` ('train', 'valid', 'test'), each labelled with its slots."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Fluent Speech Commands root {root} does not exist; pass the folder that holds data/ and wavs/")
    report = DropReport(source=f"Fluent Speech Commands {root} {list(splits)}")
    rows: list[tuple[str, dict, str]] = []
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"Fluent Speech Commands split must be one of {SPLITS}, got {split!r}")
        table = root / "data" / f"{split}_data.csv"
        if not table.is_file():
            raise FileNotFoundError(f"{table} not found: a Fluent Speech Commands root holds data/{{train,valid,test}}_data.csv")
        with table.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{table}: missing column(s) {missing}; it has {reader.fieldnames}")
            for n, row in enumerate(reader, 2):
                if any(not (row[c] or "").strip() for c in COLUMNS):
                    report.add("row with an empty field", f"{table}:{n}")
                    continue
                rows.append((split, row, f"{table}:{n}"))
    utterances = []
    for (split, row, _), meta in readable(rows, lambda x: root / x[1]["path"], root, "fluent", report,
                                          "unreadable or missing audio", where=lambda x: x[2]):
        utterances.append(Utterance(
            id=Path(row["path"]).stem, path=root / row["path"], split=split, speaker=row["speakerId"].strip(), duration=meta.seconds,
            transcript=text.normalize(row["transcription"]), label=SLOT_SEP.join(row[s].strip() for s in SLOTS)))
    if not utterances:
        raise ValueError(f"{root}: no usable utterances in splits {list(splits)}")
    report.log()
    return Corpus(utterances, report)


def _read(config, which: str) -> Corpus:
    return load_fluent_commands(config.root, list(getattr(config, which)))


register_layout("fluent_speech_commands", _read)

"""IEMOCAP as it lies on disk, for SUPERB's emotion recognition (ER): ``ROOT/SessionN/sentences/
wav/DIALOG/UTTERANCE.wav`` and ``ROOT/SessionN/dialog/EmoEvaluation/DIALOG.txt``, whose lines
``[START - END]<TAB>UTTERANCE<TAB>EMOTION<TAB>[V, A, D]`` label each utterance.

As s3prl's IEMOCAP_preprocess: four classes, neutral, happy (excited merged into it), angry and
sad; every other label is dropped (and counted). Splits are leave-one-session-out folds:
``foldK_test`` is session K, ``foldK_train``/``foldK_dev`` the other sessions' utterances with a
seeded fifth held out for model selection (s3prl's valid_ratio 0.2). SUPERB reports the accuracy
averaged over the five folds. No synthetic stand-in exists: emotion is not something the TTS
engines here can act, so ER runs on the real corpus only.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from .corpus import Corpus, DropReport, Utterance, readable, register_layout

CLASSES = ("neu", "hap", "ang", "sad")
MERGED = {"exc": "hap"}
SESSIONS = 5
VALID_RATIO = 0.2
_FOLD = re.compile(r"fold([1-9])_(train|dev|test)$")
_LINE = re.compile(r"^\[[^\]]*\]\t(\S+)\t(\S+)\t")


def parse_split(split: str) -> tuple[int, str]:
    m = _FOLD.match(split)
    if not m or not 1 <= int(m.group(1)) <= SESSIONS:
        raise ValueError(f"IEMOCAP split must be foldK_train, foldK_dev or foldK_test with K in 1..{SESSIONS}, got {split!r}")
    return int(m.group(1)), m.group(2)


def read_session(root: Path, session: int, report: DropReport) -> list[tuple[str, str, Path]]:
    """(utterance, label, wav) of one session's four-class utterances."""
    base = root / f"Session{session}"
    labels_dir = base / "dialog" / "EmoEvaluation"
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"{labels_dir} not found: an IEMOCAP root holds Session1..Session{SESSIONS}/dialog/EmoEvaluation")
    wavs = {p.stem: p for p in sorted((base / "sentences" / "wav").glob("*/*.wav"))}
    out = []
    for table in sorted(labels_dir.glob("*.txt")):
        for line in table.read_text(errors="replace").splitlines():
            m = _LINE.match(line)
            if not m:
                continue
            utt, label = m.group(1), MERGED.get(m.group(2), m.group(2))
            if label not in CLASSES:
                report.add(f"label {m.group(2)!r} outside the four classes", utt)
            elif utt not in wavs:
                report.add("labelled utterance without its wav", f"{table.name}: {utt}")
            else:
                out.append((utt, label, wavs[utt]))
    return out


def load_iemocap(root: str | Path, splits: list[str]) -> Corpus:
    """Utterances of the given fold splits, labelled with their emotion class."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"IEMOCAP root {root} does not exist; pass the folder that holds Session1..Session{SESSIONS}")
    report = DropReport(source=f"IEMOCAP {root} {list(splits)}")
    wanted: list[tuple[str, str, str, Path]] = []
    sessions: dict[int, list] = {}
    for split in splits:
        fold, part = parse_split(split)
        chosen = [fold] if part == "test" else [s for s in range(1, SESSIONS + 1) if s != fold]
        items = [x for s in chosen for x in sessions.setdefault(s, read_session(root, s, report))]
        if part != "test":
            held = set(random.Random(f"iemocap-fold{fold}").sample(range(len(items)), round(VALID_RATIO * len(items))))
            items = [x for k, x in enumerate(items) if (k in held) == (part == "dev")]
        wanted += [(split, *x) for x in items]
    utterances = []
    for (split, utt, label, path), meta in readable(wanted, lambda x: x[3], root, "iemocap", report):
        utterances.append(Utterance(id=utt, path=path, split=split, speaker=utt.split("_")[0], duration=meta.seconds,
                                    label=label))
    if not utterances:
        raise ValueError(f"{root}: no usable utterances in splits {list(splits)}")
    report.log()
    return Corpus(utterances, report)


def _read(config, which: str) -> Corpus:
    return load_iemocap(config.root, list(getattr(config, which)))


register_layout("iemocap", _read)

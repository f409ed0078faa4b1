"""QUESST 2014 as it lies on disk, for SUPERB's query-by-example spoken term detection (QbE); also
the layout ``bench data synth --kind terms`` writes.

Layout: the search utterances ``ROOT/Audio/*.wav``, the queries ``ROOT/dev_queries/*.wav`` and
``ROOT/eval_queries/*.wav``; ``ROOT/scoring/language_key_{utterances,dev,eval}.lst`` (``PATH
LANGUAGE`` per line, PATH under a leading folder that is dropped, as s3prl's reader does: only
``nnenglish`` is kept, SUPERB's English subset) and the ground truth
``ROOT/scoring/groundtruth_quesst14_{dev,eval}/*.rttm``, whose ``LEXEME`` lines name a search
utterance (field 2) where a query occurs (field 6), NIST STD's RTTM convention. The dataset's own
scorer (``scoring/score-TWV-Cnxe.sh``) reads the same files; our MTWV re-implements its
utterance-level maximum TWV (downstream.metrics.mtwv).

Splits: ``dev`` is the search utterances and the dev queries; ``eval`` adds the eval queries, as
SUPERB picks the hidden layer on the dev queries and reports the eval queries at that layer. An
utterance's ``split`` says what it is (``doc``, ``dev``, ``eval``); the corpus's ``trials`` are
the true (1, query, utterance) detections, every other pair being a non-target.
"""

from __future__ import annotations

from pathlib import Path

from .corpus import Corpus, DropReport, Utterance, readable, register_layout

LANGUAGE = "nnenglish"
SPLITS = ("dev", "eval")
LISTS = {"doc": "language_key_utterances.lst", "dev": "language_key_dev.lst", "eval": "language_key_eval.lst"}


def read_list(root: Path, kind: str, report: DropReport) -> list[Path]:
    path = root / "scoring" / LISTS[kind]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a QUESST 2014 root holds scoring/{', scoring/'.join(LISTS.values())}")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or "/" not in parts[0]:
            report.add("malformed list line", f"{path.name}:{n}")
        elif parts[1] == LANGUAGE:
            out.append(root / parts[0].split("/", 1)[1])
    return out


def read_groundtruth(root: Path, split: str, report: DropReport) -> set[tuple[str, str]]:
    """(query, search utterance) pairs where the query occurs."""
    folder = root / "scoring" / f"groundtruth_quesst14_{split}"
    files = sorted(folder.glob("*.rttm"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.rttm ground truth (QUESST 2014's scoring/groundtruth_quesst14_{split})")
    pairs = set()
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts or parts[0] != "LEXEME":
                continue
            if len(parts) < 6:
                report.add("malformed RTTM line", f"{path.name}:{n}")
                continue
            pairs.add((parts[5], parts[1]))
    return pairs


def load_quesst14(root: str | Path, splits: list[str]) -> Corpus:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"QUESST 2014 root {root} does not exist; pass the folder that holds Audio/ and scoring/")
    if len(splits) != 1 or splits[0] not in SPLITS:
        raise ValueError(f"QUESST 2014 split must be one of {SPLITS} (one of them), got {list(splits)}")
    report = DropReport(source=f"QUESST 2014 {root} {list(splits)}")
    kinds = ["doc", "dev"] + (["eval"] if splits[0] == "eval" else [])
    items = [(kind, path) for kind in kinds for path in read_list(root, kind, report)]
    truth = set().union(*(read_groundtruth(root, s, report) for s in kinds[1:]))
    utterances = []
    for (kind, path), meta in readable(items, lambda x: x[1], root, "quesst14", report, "unreadable or missing audio"):
        utterances.append(Utterance(id=path.stem, path=path, split=kind, speaker="", duration=meta.seconds))
    kept = {u.id: u.split for u in utterances}
    if not any(s == "doc" for s in kept.values()) or not any(s != "doc" for s in kept.values()):
        raise ValueError(f"{root}: {splits[0]} needs search utterances and queries; found {len(kept)} usable files")
    trials = sorted((1, q, d) for q, d in truth if kept.get(q) in ("dev", "eval") and kept.get(d) == "doc")
    report.log()
    return Corpus(utterances, report, trials=trials)


def _read(config, which: str) -> Corpus:
    return load_quesst14(config.root, list(getattr(config, which)))


register_layout("quesst14", _read)

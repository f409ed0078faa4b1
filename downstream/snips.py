"""Audio SNIPS as SUPERB distributes it, for slot filling (SF); also the layout ``bench data synth
--kind slots`` writes.

Layout: ``ROOT/all.iob.snips.txt`` (``UID BOS w1 ... wn EOS<TAB>O t1 ... tn INTENT``: a slot
name or ``O`` per word), ``ROOT/slots.txt`` and the audio ``ROOT/{train,valid,test}/**/UID.wav``.
As s3prl's snips corpus: a split keeps the files of its speakers (SUPERB's Polly voices, a UID
starts with its speaker's name; `DataConfig.speakers` replaces the lists), punctuation words are
dropped and ``&`` is read AND. An utterance's ``transcript`` is its words, its ``label`` the slot
tag of each word.
"""

from __future__ import annotations

from pathlib import Path

from . import text
from .corpus import Corpus, DropReport, Utterance, readable, register_layout

SPLITS = ("train", "valid", "test")
# s3prl's downstream/ctc/snips.yaml
SUPERB_SPEAKERS = {
    "train": ("Ivy", "Joanna", "Joey", "Justin", "Kendra", "Kimberly", "Matthew", "Salli"),
    "valid": ("Aditi", "Amy", "Geraint", "Nicole"),
    "test": ("Brian", "Emma", "Raveena", "Russell"),
}
IOB_FILE = "all.iob.snips.txt"
OUTSIDE = "O"
_PUNCT_WORDS = set("?!.,;-")


def parse_iob(line: str) -> tuple[str, list[str], list[str]] | None:
    """(uid, words, tags) of an IOB line, punctuation dropped; None if malformed."""
    if "\t" not in line:
        return None
    left, right = line.rstrip("\r\n ").split("\t", 1)
    words, tags = left.split(" "), right.split(" ")
    if len(words) < 3 or len(words) - 1 != len(tags) or words[1] != "BOS" or words[-1] != "EOS":
        return None
    pairs = [("AND" if w == "&" else w, t) for w, t in zip(words[2:-1], tags[1:-1]) if w not in _PUNCT_WORDS]
    return words[0], [text.normalize(w) for w, _ in pairs], [t for _, t in pairs]


def tagged(words: list[str], tags: list[str]) -> str:
    """s3prl's scoring form: each slot's words between ``B-SLOT`` and ``E-SLOT``."""
    out = []
    for i, (w, t) in enumerate(zip(words, tags)):
        if t != OUTSIDE and (i == 0 or tags[i - 1] != t):
            out.append(f"B-{t}")
        out.append(w)
        if t != OUTSIDE and (i == len(tags) - 1 or tags[i + 1] != t):
            out.append(f"E-{t}")
    return " ".join(out)


def load_snips(root: str | Path, splits: list[str], speakers: tuple[str, ...] | None = None) -> Corpus:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SNIPS root {root} does not exist; pass the folder that holds {IOB_FILE} and train/")
    table = root / IOB_FILE
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found: an audio SNIPS root holds {IOB_FILE}, slots.txt and train/, valid/, test/")
    report = DropReport(source=f"SNIPS {root} {list(splits)}")
    labels: dict[str, tuple[list[str], list[str]]] = {}
    for n, line in enumerate(table.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parsed = parse_iob(line)
        if parsed is None:
            report.add("malformed IOB line", f"{IOB_FILE}:{n}")
            continue
        labels[parsed[0]] = (parsed[1], parsed[2])
    wanted = []
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"SNIPS split must be one of {SPLITS}, got {split!r}")
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} not found: an audio SNIPS root holds train/, valid/ and test/")
        keep = speakers or SUPERB_SPEAKERS[split]
        for path in sorted(folder.rglob("*.wav")):
            if path.stem not in labels:
                report.add(f"audio without a line in {IOB_FILE}", path.name)
            elif any(path.stem.startswith(s) for s in keep):
                wanted.append((split, path))
    utterances = []
    for (split, path), meta in readable(wanted, lambda x: x[1], root, "snips", report):
        words, tags = labels[path.stem]
        bad = text.out_of_vocabulary(" ".join(words))
        if bad:
            report.add("words outside the character set", f"{path.stem}: {''.join(sorted(bad))}")
            continue
        speaker = next(s for s in (speakers or SUPERB_SPEAKERS[split]) if path.stem.startswith(s))
        utterances.append(Utterance(id=path.stem, path=path, split=split, speaker=speaker, duration=meta.seconds,
                                    transcript=" ".join(words), label=" ".join(tags)))
    if not utterances:
        raise ValueError(f"{root}: no usable utterances in splits {list(splits)} (speakers {speakers or 'SUPERB'})")
    report.log()
    return Corpus(utterances, report)


def _read(config, which: str) -> Corpus:
    return load_snips(config.root, list(getattr(config, which)), config.speakers)


register_layout("snips", _read)

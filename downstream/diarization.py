"""Speaker diarization data in Kaldi's data-directory form, as s3prl's diarization recipe reads
Libri2Mix (also the layout ``bench data synth --kind mixtures`` writes).

Layout: ``ROOT/SPLIT/wav.scp`` (``RECORDING PATH``; a path relative to ROOT/SPLIT, or absolute),
``segments`` (``UTTERANCE RECORDING START END`` in seconds), ``utt2spk`` (``UTTERANCE SPEAKER``)
and ``rttm`` (the reference dscore/md-eval read; not needed here). An utterance of the corpus is a
recording; its ``label`` lists who speaks when, ``SPEAKER START END`` per segment joined by ``;``.
"""

from __future__ import annotations

from pathlib import Path

from .corpus import Corpus, DropReport, Utterance, readable, register_layout

FILES = ("wav.scp", "segments", "utt2spk")


def encode_segments(segments: list[tuple[str, float, float]]) -> str:
    return ";".join(f"{s} {a:.3f} {b:.3f}" for s, a, b in sorted(segments, key=lambda x: (x[1], x[0])))


def decode_segments(label: str) -> list[tuple[str, float, float]]:
    out = []
    for part in filter(None, label.split(";")):
        s, a, b = part.split(" ")
        out.append((s, float(a), float(b)))
    return out


def _table(path: Path, fields: int, report: DropReport) -> list[list[str]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != fields:
            report.add(f"malformed {path.name} line", f"{path.parent.name}/{path.name}:{n}")
            continue
        rows.append(parts)
    return rows


def load_diarization(root: str | Path, splits: list[str]) -> Corpus:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"diarization root {root} does not exist; pass the folder that holds the Kaldi data dirs")
    report = DropReport(source=f"diarization {root} {list(splits)}")
    utterances = []
    for split in splits:
        folder = root / split
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: missing {', '.join(missing)}; a Kaldi data dir holds {', '.join(FILES)}")
        wavs = {}
        for rec, where in _table(folder / "wav.scp", 2, report):
            path = Path(where) if Path(where).is_absolute() else folder / where
            wavs[rec] = path
        speaker = dict(_table(folder / "utt2spk", 2, report))
        segments: dict[str, list[tuple[str, float, float]]] = {}
        for utt, rec, start, end in _table(folder / "segments", 4, report):
            if utt not in speaker:
                report.add("segment without a speaker in utt2spk", utt)
                continue
            try:
                a, b = float(start), float(end)
            except ValueError:
                report.add("segment with a non-numeric time", utt)
                continue
            segments.setdefault(rec, []).append((speaker[utt], a, b))
        for (rec, path), meta in readable(sorted(wavs.items()), lambda x: x[1], folder, "diarization", report,
                                          "unreadable or missing audio"):
            if rec not in segments:
                report.add("recording without segments", rec)
            else:
                utterances.append(Utterance(id=rec, path=path, split=split, speaker="", duration=meta.seconds,
                                            label=encode_segments(segments[rec])))
    if not utterances:
        raise ValueError(f"{root}: no usable recordings in splits {list(splits)}")
    report.log()
    return Corpus(utterances, report)


def _read(config, which: str) -> Corpus:
    return load_diarization(config.root, list(getattr(config, which)))


register_layout("kaldi_diarization", _read)

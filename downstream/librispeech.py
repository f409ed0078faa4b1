"""LibriSpeech as it lies on disk (also the layout ``bench data synth`` writes).

``ROOT/SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` with ``SPEAKER-CHAPTER.trans.txt``
beside the audio, and ``ROOT/SPEAKERS.TXT`` giving each speaker's sex.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from . import text
from .corpus import Corpus, DropReport, Utterance, readable, register_layout

AUDIO_SUFFIXES = (".flac", ".wav")


def read_speakers(root: Path) -> dict[str, str]:
    """Speaker id -> 'F' or 'M' from SPEAKERS.TXT (``ID | SEX | SUBSET | MINUTES | NAME``)."""
    path = root / "SPEAKERS.TXT"
    if not path.is_file():
        return {}
    genders: dict[str, str] = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 2 or fields[1].upper() not in ("F", "M"):
            raise ValueError(f"{path}:{n}: expected 'ID | SEX | ...' with SEX F or M, got {line!r}")
        genders[fields[0]] = fields[1].upper()
    return genders


def _transcripts(split_dir: Path, report: DropReport) -> dict[str, tuple[str, Path]]:
    lines: dict[str, tuple[str, Path]] = {}
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        for n, line in enumerate(trans.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            utt_id, _, words = line.strip().partition(" ")
            if not words.strip():
                report.add("empty transcript line", f"{trans}:{n}")
                continue
            lines[utt_id] = (words, trans)
    return lines


def load_librispeech(
    root: str | Path,
    splits: Sequence[str],
    speakers: Iterable[str] | None = None,
    gender: str | None = None,
) -> Corpus:
    """Utterances of ``splits``, optionally only some speakers or one gender ('F'/'M').

    Dropped (and reported): audio with no transcript line, transcript lines with no audio,
    unreadable or empty audio, transcripts with characters outside SUPERB's vocabulary.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LibriSpeech root {root} does not exist; pass the folder that holds the split folders")
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        have = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(f"{root}: split folder(s) {missing} not found; available: {have}")
    genders = read_speakers(root)
    if gender is not None:
        gender = gender.upper()
        if gender not in ("F", "M"):
            raise ValueError(f"gender must be 'F' or 'M', got {gender!r}")
        if not genders:
            raise FileNotFoundError(f"{root / 'SPEAKERS.TXT'} is missing, so utterances cannot be filtered by gender")
    wanted = {str(s) for s in speakers} if speakers is not None else None
    report = DropReport(source=f"LibriSpeech {root} {list(splits)}")
    utterances: list[Utterance] = []
    for split in splits:
        split_dir = root / split
        if wanted is not None and not any((split_dir / s).is_dir() for s in wanted):
            continue
        trans = _transcripts(split_dir, report)
        files = sorted(p for p in split_dir.glob("*/*/*") if p.suffix.lower() in AUDIO_SUFFIXES)
        files = [p for p in files if wanted is None or p.parent.parent.name in wanted]
        files = [p for p in files if gender is None or genders.get(p.parent.parent.name) == gender]
        seen = {p.stem for p in files}
        for path in files:
            if path.stem not in trans:
                report.add("audio with no transcript line", str(path))
        files = [p for p in files if p.stem in trans]
        for path, meta in readable(files, lambda p: p, split_dir, "librispeech", report, "unreadable or empty audio"):
            utt_id, speaker = path.stem, path.parent.parent.name
            words = text.normalize(trans[utt_id][0])
            bad = text.out_of_vocabulary(words)
            if bad:
                report.add("characters outside the vocabulary", f"{utt_id} {''.join(sorted(bad))!r} in {trans[utt_id][1]}")
                continue
            utterances.append(
                Utterance(
                    id=utt_id, path=path, split=split, speaker=speaker, duration=meta.seconds,
                    transcript=words, gender=genders.get(speaker),
                )
            )
        for utt_id, (_, trans_file) in trans.items():
            speaker = utt_id.split("-")[0]
            if utt_id not in seen and (wanted is None or speaker in wanted) and (gender is None or genders.get(speaker) == gender):
                report.add("transcript line with no audio file", f"{utt_id} in {trans_file}")
    if wanted is not None:
        absent = sorted(wanted - {u.speaker for u in utterances})
        if absent:
            raise ValueError(f"{root}: speaker(s) {absent} have no usable utterances in splits {list(splits)}")
    if gender is not None and not utterances:
        raise ValueError(f"{root}: no utterances of gender {gender} in splits {list(splits)}")
    report.log()
    return Corpus(utterances, report)


def _read(config, which: str) -> Corpus:
    return load_librispeech(config.root, list(getattr(config, which)), speakers=config.speakers, gender=config.gender)


register_layout("librispeech", _read)

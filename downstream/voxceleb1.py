"""VoxCeleb1 as it lies on disk (also the layout ``bench data synth --kind speakers`` writes), for
SUPERB's speaker identification (SID) and verification (ASV) tasks.

Layout: ``ROOT/{dev,test}/wav/SPEAKER/VIDEO/NNNNN.wav`` (the release's ``vox1_dev_wav`` and
``vox1_test_wav`` unpacked side by side; ``ROOT/wav/...`` is read too), ``ROOT/iden_split.txt``
(``1|2|3 SPEAKER/VIDEO/NNNNN.wav``: train, dev, test of identification; s3prl ships the same
file as ``veri_test_class.txt``, also accepted) and ``ROOT/veri_test.txt`` (``1|0 PATH PATH``:
the verification trials; s3prl's ``voxceleb1_test_v2.txt`` too).

Splits: ``train``/``dev``/``test`` are identification's (every speaker, its utterances split by
``iden_split.txt``). ``sv_train``/``sv_dev``/``sv_test`` are verification's: ``sv_test`` is the
utterances of the trial list, with the trials; training speakers are every speaker the trials do
not name, their identification-dev utterances held out as ``sv_dev``, on seeded trials (s3prl
ships its own dev trial list instead; see docs/downstream.md).
"""

from __future__ import annotations

import random
from pathlib import Path

from .corpus import Corpus, DropReport, Utterance, readable, register_layout

SID_SPLITS = {"train": 1, "dev": 2, "test": 3}
SV_SPLITS = ("sv_train", "sv_dev", "sv_test")
SPLIT_FILES = ("iden_split.txt", "veri_test_class.txt")
TRIAL_FILES = ("veri_test.txt", "voxceleb1_test_v2.txt")
DEV_TRIALS_PER_UTTERANCE = 2  # sv_dev: one same-speaker and one other-speaker trial per utterance


def utterance_id(rel: str) -> str:
    """``id10001/1zcIwhmdeo4/00001.wav`` -> ``id10001-1zcIwhmdeo4-00001`` (s3prl's name for it)."""
    return "-".join(Path(rel).with_suffix("").parts)


def _first(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root}: no {what} ({' or '.join(names)}); a VoxCeleb1 root holds iden_split.txt, "
                            "veri_test.txt and dev/wav, test/wav")


def _wav_index(root: Path) -> dict[str, Path]:
    """SPEAKER/VIDEO/NNNNN.wav -> its file, over ROOT/*/wav and ROOT/wav."""
    index: dict[str, Path] = {}
    for base in [*sorted(root.glob("*/wav")), root / "wav"]:
        if base.is_dir():
            for path in sorted(base.glob("*/*/*.wav")):
                index.setdefault("/".join(path.relative_to(base).parts), path)
    return index


def read_iden_split(path: Path, report: DropReport) -> list[tuple[int, str]]:
    """(split code, relative path) per line; malformed lines are counted, not fatal."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[0] not in ("1", "2", "3") or parts[1].count("/") != 2:
            report.add("malformed split line", f"{path.name}:{n}: {line.strip()[:60]}")
            continue
        out.append((int(parts[0]), parts[1]))
    if not out:
        raise ValueError(f"{path}: no usable lines; each line is '1|2|3 SPEAKER/VIDEO/NNNNN.wav'")
    return out


def read_trials(path: Path, report: DropReport) -> list[tuple[int, str, str]]:
    """(1 same speaker | 0, path, path) per line of a trial list."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            report.add("malformed trial line", f"{path.name}:{n}: {line.strip()[:60]}")
            continue
        out.append((int(parts[0]), parts[1], parts[2]))
    if not out:
        raise ValueError(f"{path}: no usable trials; each line is '1|0 SPEAKER/VIDEO/A.wav SPEAKER/VIDEO/B.wav'")
    return out


def dev_trials(utterances: list[Utterance], seed: int = 0) -> list[tuple[int, str, str]]:
    """Seeded trials over held-out utterances: for each, one with another utterance of its speaker
    and one with an utterance of another speaker (as many target as non-target trials)."""
    rng = random.Random(f"sv-dev-{seed}")
    by_speaker: dict[str, list[str]] = {}
    for u in utterances:
        by_speaker.setdefault(u.speaker, []).append(u.id)
    speakers = sorted(by_speaker)
    trials = []
    for u in utterances:
        same = [i for i in by_speaker[u.speaker] if i != u.id]
        others = [s for s in speakers if s != u.speaker]
        if same:
            trials.append((1, u.id, rng.choice(same)))
        if others:
            trials.append((0, u.id, rng.choice(by_speaker[rng.choice(others)])))
    return trials


def load_voxceleb1(root: str | Path, splits: list[str]) -> Corpus:
    """Utterances of identification (``train``/``dev``/``test``) or verification (``sv_*``)
    splits, labelled with their speaker; ``sv_dev``/``sv_test`` carry their trials."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VoxCeleb1 root {root} does not exist; pass the folder that holds iden_split.txt and dev/wav")
    unknown = [s for s in splits if s not in SID_SPLITS and s not in SV_SPLITS]
    if unknown or not splits:
        raise ValueError(f"VoxCeleb1 split must be one of {[*SID_SPLITS, *SV_SPLITS]}, got {list(splits)}")
    if any(s in SID_SPLITS for s in splits) and any(s in SV_SPLITS for s in splits):
        raise ValueError(f"VoxCeleb1 splits {list(splits)} mix identification and verification splits")
    report = DropReport(source=f"VoxCeleb1 {root} {list(splits)}")
    iden = read_iden_split(_first(root, SPLIT_FILES, "identification split"), report)
    index = _wav_index(root)
    wanted: list[tuple[str, str]] = []  # (split, relative path)
    trials: list[tuple[int, str, str]] | None = None
    if splits[0] in SID_SPLITS:
        codes = {SID_SPLITS[s]: s for s in splits}
        wanted = [(codes[c], rel) for c, rel in iden if c in codes]
    else:
        listed = read_trials(_first(root, TRIAL_FILES, "verification trial list"), report)
        test_speakers = {p.split("/")[0] for _, a, b in listed for p in (a, b)}
        for split in splits:
            if split == "sv_test":
                seen = dict.fromkeys(p for _, a, b in listed for p in (a, b))
                wanted += [("sv_test", rel) for rel in seen]
                trials = (trials or []) + [(t, utterance_id(a), utterance_id(b)) for t, a, b in listed]
            else:
                dev = split == "sv_dev"
                wanted += [(split, rel) for c, rel in iden if rel.split("/")[0] not in test_speakers and (c == 2) == dev]
    for _, rel in wanted:
        if rel not in index:
            report.add("listed file not under ROOT/*/wav", rel)
    present = [(split, rel) for split, rel in wanted if rel in index]
    utterances, kept = [], set()
    for (split, rel), meta in readable(present, lambda x: index[x[1]], root, "voxceleb1", report):
        path = index[rel]
        uid = utterance_id(rel)
        kept.add(uid)
        utterances.append(Utterance(id=uid, path=path, split=split, speaker=rel.split("/")[0], duration=meta.seconds,
                                    label=rel.split("/")[0]))
    if not utterances:
        raise ValueError(f"{root}: no usable utterances in splits {list(splits)}")
    if "sv_dev" in splits:
        trials = (trials or []) + dev_trials([u for u in utterances if u.split == "sv_dev"])
    if trials is not None:
        usable = [t for t in trials if t[1] in kept and t[2] in kept]
        for t in trials:
            if t[1] not in kept or t[2] not in kept:
                report.add("trial naming a missing utterance", f"{t[1]} {t[2]}")
        where = "sv_dev's seeded trials" if "sv_test" not in splits else _first(root, TRIAL_FILES, "").name
        if not usable:
            raise ValueError(f"{root}: no verification trial of {where} has both of its utterances")
        if {t for t, _, _ in usable} != {0, 1}:
            missing = "same-speaker" if 1 not in {t for t, _, _ in usable} else "different-speaker"
            raise ValueError(f"{root}: {where} has no {missing} trial; an error rate needs both kinds")
        trials = usable
    report.log()
    return Corpus(utterances, report, trials=trials)


def _read(config, which: str) -> Corpus:
    return load_voxceleb1(config.root, list(getattr(config, which)))


register_layout("voxceleb1", _read)

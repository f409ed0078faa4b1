"""Speech Commands v0.01 as SUPERB's keyword-spotting task uses it.

``ROOT/WORD/SPEAKER_nohash_N.wav``, ``validation_list.txt`` and ``testing_list.txt`` (paths
relative to ROOT), and ``_background_noise_/*.wav`` cut into 1 s segments for ``_silence_``.
SUPERB tests on the separate ``speech_commands_test_set_v0.01`` whose folders already are the
12 classes; pass it as ``test_root``. Without one, ``testing_list.txt`` gives the test split.
"""

from __future__ import annotations

from pathlib import Path

from . import audio
from .corpus import Corpus, DropReport, Utterance, readable, register_layout

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
CLASSES = (*COMMANDS, UNKNOWN, SILENCE)
NOISE_DIR = "_background_noise_"
SPLITS = ("train", "dev", "test")
# One in DEV_EVERY background-noise segments goes to dev, the rest to train.
DEV_EVERY = 10


def speaker_of(path: Path) -> str:
    """The speaker id is the file name's prefix before ``_nohash_``."""
    return path.stem.split("_nohash_")[0]


def _read_list(root: Path, name: str) -> set[str]:
    path = root / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Speech Commands v0.01 root holds validation_list.txt and testing_list.txt")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _label(word: str) -> str:
    return word if word in COMMANDS or word in (UNKNOWN, SILENCE) else UNKNOWN


def _noise_segments(root: Path, split: str, report: DropReport) -> list[Utterance]:
    noise = root / NOISE_DIR
    if not noise.is_dir():
        raise FileNotFoundError(f"{noise} not found: the {SILENCE} class is cut from background noise files")
    out = []
    for path in sorted(noise.glob("*.wav")):
        try:
            meta = audio.info(path)
        except audio.AudioError as exc:
            report.add("unreadable or empty audio", str(exc))
            continue
        step = meta.sample_rate
        for i in range(meta.frames // step):
            if (split == "dev") != (i % DEV_EVERY == 0):
                continue
            out.append(Utterance(
                id=f"{SILENCE}/{path.stem}-{i}", path=path, split=split, speaker=path.stem,
                duration=1.0, label=SILENCE, offset=i * step, frames=step,
            ))
    return out


def load_speech_commands(root: str | Path, split: str, test_root: str | Path | None = None) -> Corpus:
    """Utterances of one split ('train', 'dev' or 'test') with their class label."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Speech Commands root {root} does not exist")
    report = DropReport(source=f"Speech Commands {root} {split}")
    if split == "test" and test_root is not None:
        base = Path(test_root)
        files = sorted(base.glob("*/*.wav"))
        if not files:
            raise FileNotFoundError(f"{base}: no WORD/*.wav files; expected speech_commands_test_set_v0.01")
        extra: list[Utterance] = []
    else:
        base = root
        dev, test = _read_list(root, "validation_list.txt"), _read_list(root, "testing_list.txt")
        files = []
        for path in sorted(root.glob("*/*.wav")):
            if path.parent.name == NOISE_DIR:
                continue
            rel = f"{path.parent.name}/{path.name}"
            which = "dev" if rel in dev else "test" if rel in test else "train"
            if which == split:
                files.append(path)
        listed = dev if split == "dev" else test if split == "test" else set()
        for rel in sorted(listed - {f"{p.parent.name}/{p.name}" for p in files}):
            report.add("listed file not found", str(root / rel))
        extra = _noise_segments(root, split, report) if split != "test" else []
    utterances = []
    for path, meta in readable(files, lambda p: p, base, "speech-commands", report, "unreadable or empty audio"):
        utterances.append(Utterance(
            id=f"{path.parent.name}/{path.stem}", path=path, split=split, speaker=speaker_of(path),
            duration=meta.seconds, label=_label(path.parent.name),
        ))
    if not utterances:
        raise ValueError(f"{base}: no usable utterances for split {split!r}")
    report.log()
    return Corpus(utterances + extra, report)


def _read(config, which: str) -> Corpus:
    return load_speech_commands(config.root, which, config.test_root)


register_layout("speech_commands", _read)

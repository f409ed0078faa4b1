"""Readers (LibriSpeech, Speech Commands), text, batching: on tiny fixtures with broken files."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from downstream import audio, text
from downstream.batching import LengthBucketSampler, SpeechDataset, collate
from downstream.librispeech import load_librispeech, read_speakers
from downstream.speech_commands import CLASSES, load_speech_commands, speaker_of


def _tone(seconds: float, sr: int = 16000, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wav = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wav] * channels, axis=1) if channels > 1 else wav


@pytest.fixture
def libri(tmp_path):
    """Two speakers in train, one in dev; broken files of every kind in train."""
    root = tmp_path / "LibriSpeech"
    (root).mkdir()
    (root / "SPEAKERS.TXT").write_text(";ID |SEX| SUBSET |MINUTES| NAME\n19 | F | train | 1.0 | A\n26 | M | train | 1.0 | B\n84 | F | dev | 1.0 | C\n")

    def chapter(split, spk, ch, utts, lines):
        d = root / split / spk / ch
        d.mkdir(parents=True)
        for name, writer in utts.items():
            writer(d / f"{spk}-{ch}-{name}.flac")
        (d / f"{spk}-{ch}.trans.txt").write_text("".join(f"{spk}-{ch}-{k} {v}\n" for k, v in lines.items()))

    good = lambda s: (lambda p: sf.write(p, _tone(s), 16000))  # noqa: E731
    chapter("train-clean-100", "19", "198", {
        "0000": good(1.0), "0001": good(2.0),
        "0002": lambda p: sf.write(p, _tone(1.0, sr=8000), 8000),        # wrong rate: resampled
        "0003": lambda p: sf.write(p, _tone(1.0, channels=2), 16000),    # stereo: downmixed
        "0004": lambda p: p.write_bytes(b"not audio at all" * 10),        # corrupt
        "0005": lambda p: p.write_bytes(b""),                              # empty
        "0006": good(1.0),                                                 # no transcript line
    }, {"0000": "HELLO WORLD", "0001": "IT'S A TEST", "0002": "LOW RATE", "0003": "TWO CHANNELS",
        "0004": "BROKEN", "0005": "EMPTY", "0007": "NO AUDIO FOR THIS LINE"})
    chapter("train-clean-100", "26", "495", {"0000": good(3.0), "0001": good(1.5)},
            {"0000": "MISTER SMITH", "0001": "ROOM 42"})                  # digits: outside vocabulary
    chapter("dev-clean", "84", "121", {"0000": good(1.0)}, {"0000": "DEV ONE"})
    return root


def test_librispeech_loads_good_and_reports_every_drop(libri, caplog):
    with caplog.at_level(logging.WARNING):
        corpus = load_librispeech(libri, ["train-clean-100", "dev-clean"])
    ids = sorted(u.id for u in corpus.utterances)
    assert ids == ["19-198-0000", "19-198-0001", "19-198-0002", "19-198-0003", "26-495-0000", "84-121-0000"]
    counts = corpus.dropped.counts
    assert counts["unreadable or empty audio"] == 2
    assert counts["audio with no transcript line"] == 1
    assert counts["transcript line with no audio file"] == 1
    assert counts["characters outside the vocabulary"] == 1
    assert corpus.dropped.total == 5
    assert "19-198-0004.flac" in corpus.dropped.summary() and "26-495-0001" in corpus.dropped.summary()
    assert "dropped 5" in caplog.text
    utt = {u.id: u for u in corpus.utterances}
    assert utt["19-198-0001"].transcript == "IT'S A TEST" and utt["19-198-0001"].duration == pytest.approx(2.0)
    assert utt["19-198-0000"].gender == "F" and utt["26-495-0000"].gender == "M"
    assert utt["84-121-0000"].split == "dev-clean"


def test_resample_and_downmix_are_said_once(libri, caplog):
    corpus = load_librispeech(libri, ["train-clean-100"])
    utt = {u.id: u for u in corpus.utterances}
    audio._warned.clear()
    with caplog.at_level(logging.WARNING):
        low = audio.read(utt["19-198-0002"].path)
        audio.read(utt["19-198-0002"].path)
        stereo = audio.read(utt["19-198-0003"].path)
    assert low.shape == (16000,) and low.dtype == np.float32
    assert stereo.ndim == 1 and np.allclose(stereo, _tone(1.0), atol=1e-4)
    assert caplog.text.count("resampling") == 1 and caplog.text.count("downmixing") == 1
    # the resampled tone keeps its pitch: peak of the spectrum at 440 Hz
    spectrum = np.abs(np.fft.rfft(low))
    assert abs(np.argmax(spectrum) * 16000 / len(low) - 440) < 2


def test_librispeech_filters_and_errors(libri):
    assert {u.speaker for u in load_librispeech(libri, ["train-clean-100"], gender="m").utterances} == {"26"}
    assert {u.speaker for u in load_librispeech(libri, ["train-clean-100", "dev-clean"], speakers=["84"]).utterances} == {"84"}
    with pytest.raises(FileNotFoundError, match=r"test-clean.*available: \['dev-clean', 'train-clean-100'\]"):
        load_librispeech(libri, ["test-clean"])
    with pytest.raises(ValueError, match=r"speaker\(s\) \['77'\]"):
        load_librispeech(libri, ["train-clean-100"], speakers=["19", "77"])
    with pytest.raises(ValueError, match="'F' or 'M'"):
        load_librispeech(libri, ["train-clean-100"], gender="x")
    (libri / "SPEAKERS.TXT").unlink()
    with pytest.raises(FileNotFoundError, match="SPEAKERS.TXT"):
        load_librispeech(libri, ["train-clean-100"], gender="F")
    (libri / "SPEAKERS.TXT").write_text("19 | Q | x\n")
    with pytest.raises(ValueError, match=r"SPEAKERS.TXT:1"):
        read_speakers(libri)


def test_reading_a_corrupt_file_names_it(libri):
    bad = libri / "train-clean-100/19/198/19-198-0004.flac"
    with pytest.raises(audio.AudioError, match="19-198-0004.flac"):
        audio.read(bad)
    with pytest.raises(audio.AudioError, match="empty"):
        audio.info(libri / "train-clean-100/19/198/19-198-0005.flac")


@pytest.fixture
def commands(tmp_path):
    root = tmp_path / "speech_commands_v0.01"
    files = {"yes": ["aaa_nohash_0", "bbb_nohash_0", "ccc_nohash_1"], "go": ["aaa_nohash_0", "ddd_nohash_0"],
             "bird": ["bbb_nohash_2"], "sheila": ["ccc_nohash_0"]}
    for word, names in files.items():
        (root / word).mkdir(parents=True)
        for name in names:
            sf.write(root / word / f"{name}.wav", _tone(1.0), 16000)
    (root / "_background_noise_").mkdir()
    sf.write(root / "_background_noise_" / "white.wav", np.random.default_rng(0).normal(0, 0.1, 16000 * 25).astype(np.float32), 16000)
    (root / "validation_list.txt").write_text("yes/bbb_nohash_0.wav\nbird/bbb_nohash_2.wav\n")
    (root / "testing_list.txt").write_text("go/ddd_nohash_0.wav\nyes/zzz_nohash_0.wav\n")
    return root


def test_speech_commands_splits_labels_and_silence(commands, caplog):
    train = load_speech_commands(commands, "train")
    labels = sorted(u.label for u in train.utterances if u.label != "_silence_")
    assert labels == ["_unknown_", "go", "yes", "yes"]
    silence = [u for u in train.utterances if u.label == "_silence_"]
    assert len(silence) == 22 and all(u.frames == 16000 for u in silence)  # 25 s: 25 segments, 3 to dev
    dev = load_speech_commands(commands, "dev")
    assert sorted(u.label for u in dev.utterances) == ["_silence_"] * 3 + ["_unknown_", "yes"]
    with caplog.at_level(logging.WARNING):
        test = load_speech_commands(commands, "test")
    assert [u.label for u in test.utterances] == ["go"]
    assert test.dropped.counts["listed file not found"] == 1 and "zzz_nohash_0" in caplog.text
    assert {u.speaker for u in train.utterances if u.label != "_silence_"} == {"aaa", "ccc"}
    assert set(CLASSES) >= {u.label for u in train.utterances}
    seg = SpeechDataset(silence)[3][0]
    assert seg.shape == (16000,)
    with pytest.raises(ValueError, match="split must be"):
        load_speech_commands(commands, "valid")
    (commands / "testing_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="testing_list.txt"):
        load_speech_commands(commands, "train")


def test_speech_commands_separate_test_set(commands, tmp_path):
    test_root = tmp_path / "test_set"
    for label in ("yes", "_silence_", "_unknown_"):
        (test_root / label).mkdir(parents=True)
        sf.write(test_root / label / "x_nohash_0.wav", _tone(1.0), 16000)
    test = load_speech_commands(commands, "test", test_root=test_root)
    assert sorted(u.label for u in test.utterances) == ["_silence_", "_unknown_", "yes"]
    assert speaker_of(test_root / "yes" / "x_nohash_0.wav") == "x"


def test_text_roundtrip_and_vocabulary():
    assert text.normalize("  Don't-stop, the music!  ") == "DON'T STOP THE MUSIC"
    assert text.normalize("Café") == "CAFE"
    ids = text.encode("IT'S OK")
    assert text.decode(ids) == "IT'S OK" and 0 not in ids
    assert len(text.VOCAB) == 29  # blank + separator + 26 letters + apostrophe
    assert text.out_of_vocabulary("ROOM 42") == {"4", "2"}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        text.encode("ROOM 42")


@pytest.mark.parametrize("shuffle", [True, False])
def test_length_buckets_bound_padded_seconds_and_cover_all(shuffle):
    rng = np.random.default_rng(0)
    durations = list(rng.uniform(0.5, 15.0, size=200))
    sampler = LengthBucketSampler(durations, max_batch_seconds=40.0, max_batch_size=8, shuffle=shuffle, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert len(b) <= 8 and max(durations[i] for i in b) * len(b) <= 40.0
    assert len(sampler) == len(batches)
    sampler.set_epoch(1)
    if shuffle:
        assert list(sampler) != batches
    sharded = [list(LengthBucketSampler(durations, 40.0, 8, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(sharded[0]) == len(sharded[1])
    assert set(i for s in sharded for b in s for i in b) == set(range(200))
    with pytest.raises(ValueError, match="longer than max_batch_seconds"):
        LengthBucketSampler([1.0, 50.0], 40.0, 8)


def test_collate_pads_and_keeps_lengths(libri):
    corpus = load_librispeech(libri, ["train-clean-100"])
    ds = SpeechDataset(corpus.utterances)
    batch = collate([ds[0], ds[1]])
    assert batch["wavs"].shape == (2, 32000) and batch["lengths"].tolist() == [16000, 32000]
    assert torch.all(batch["wavs"][0, 16000:] == 0)
    assert [u.id for u in batch["utterances"]] == ["19-198-0000", "19-198-0001"]

"""SF: the audio SNIPS reader on a fixture in its layout, slot-type F1 and slot-value CER against
hand-computed values, and the CTC slot head memorising two utterances."""

import numpy as np
import pytest
import soundfile as sf

from downstream.datamodule import DataConfig
from downstream.snips import load_snips, parse_iob, tagged
from downstream.tasks import preset
from downstream.tasks.sf import SFTask, slot_type_f1, slot_value_edits, slots
from downstream.train import train_and_evaluate
from upstream_quant.loading import load_upstream

IOB = ("Ivy-0001 BOS play pink floyd on spotify EOS\tO O artist artist O service PlayMusic\n"
       "Brian-0002 BOS rock & roll now ? EOS\tO genre genre genre O O PlayMusic\n"
       "Aditi-0003 BOS go EOS\tO O Other\n"
       "Russell-0004 BOS go EOS\tO O Other\n"
       "broken line without a tab\n")


def _chirp(f0: float, rng) -> np.ndarray:
    t = np.arange(16000) / 16000
    wav = np.sin(2 * np.pi * (f0 + 400 * t) * t) * np.hanning(len(t)) + 0.01 * rng.standard_normal(len(t))
    return (0.3 * wav).astype(np.float32)


def write_snips(root, iob: str = IOB):
    rng = np.random.default_rng(0)
    (root / "all.iob.snips.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "all.iob.snips.txt").write_text(iob)
    (root / "slots.txt").write_text("O\nartist\nservice\ngenre\n")
    for split, uid, f0 in (("train", "Ivy-0001", 200.0), ("test", "Brian-0002", 600.0), ("valid", "Aditi-0003", 400.0),
                           ("train", "Nobody-0009", 300.0), ("train", "Russell-0004", 600.0)):
        (root / split).mkdir(exist_ok=True)
        sf.write(root / split / f"{uid}.wav", _chirp(f0, rng), 16000)
    return root


def test_iob_lines_and_the_reader(tmp_path):
    uid, words, tags = parse_iob(IOB.splitlines()[1])
    assert (uid, words, tags) == ("Brian-0002", ["ROCK", "AND", "ROLL", "NOW"], ["genre", "genre", "genre", "O"])
    assert tagged(words, tags) == "B-genre ROCK AND ROLL E-genre NOW"
    root = write_snips(tmp_path / "snips")
    train = load_snips(root, ["train"])
    # Nobody-0009 has no IOB line; Russell-0004 is a SUPERB test speaker, not a train one
    assert [u.id for u in train.utterances] == ["Ivy-0001"] and train.utterances[0].label == "O artist artist O service"
    assert train.dropped.counts == {"malformed IOB line": 1, "audio without a line in all.iob.snips.txt": 1}
    assert load_snips(root, ["test"], speakers=("Brian",)).utterances[0].transcript == "ROCK AND ROLL NOW"
    with pytest.raises(ValueError, match="split must be one of"):
        load_snips(root, ["dev"])
    with pytest.raises(FileNotFoundError, match="all.iob.snips.txt not found"):
        load_snips(tmp_path, ["train"])


def test_slot_metrics_on_known_tags():
    ref = "PLAY B-artist PINK FLOYD E-artist ON B-service SPOTIFY E-service"
    assert slots(ref) == {"artist": ["PINK FLOYD"], "service": ["SPOTIFY"]}
    assert slot_type_f1(ref, ref) == 1.0 and slot_value_edits(ref, ref) == (0, 17)
    hyp = "PLAY B-artist PINK FLOID E-artist ON SPOTIFY"  # one type of two found, one of one right
    assert slot_type_f1(ref, hyp) == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    # PINK FLOID vs PINK FLOYD: 1 edit; SPOTIFY unfound: 7 edits; 10 + 7 reference characters
    assert slot_value_edits(ref, hyp) == (8, 17)
    assert slot_type_f1("GO", "GO") == 1.0 and slot_type_f1("GO", "B-x GO E-x") == 0.0
    units = SFTask.unit_scores([(ref, hyp), ("GO", "GO")])
    assert units["slot_value_cer"] == [(8, 17), (0, 0)] and units["wer"] == [(1, 5), (0, 1)]


def test_the_slot_head_memorises_two_utterances(tmp_path):
    iob = "Ivy-0001 BOS go up EOS\tO O dir Move\nIvy-0002 BOS no EOS\tO O Other\n"
    root = tmp_path / "s"
    (root / "train").mkdir(parents=True)
    (root / "all.iob.snips.txt").write_text(iob)
    rng = np.random.default_rng(0)
    for uid, f0 in (("Ivy-0001", 200.0), ("Ivy-0002", 700.0)):
        sf.write(root / "train" / f"{uid}.wav", _chirp(f0, rng), 16000)
    data = DataConfig("snips", str(root), train=("train",), dev=("train",), test=("train",))
    cfg = preset("mini_sf").with_(max_steps=200, batch_size=2, val_every_epochs=5, lr=1e-2, proj=64, hidden=64)
    result = train_and_evaluate(load_upstream("fbank", device="cpu"), cfg, data, tmp_path / "sf", device="cpu", progress=False)
    assert result["config"]["labels"] == {"slots": ["dir"]}
    m = result["metrics"]
    assert m["test_slot_type_f1"] == 100.0 and m["test_slot_value_cer"] == 0.0 and m["test_wer"] == 0.0

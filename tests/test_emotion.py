"""ER: the IEMOCAP reader on a fixture in the release's layout (sessions, EmoEvaluation tables),
its leave-one-session-out folds, and the head trained on tone "emotions" made here."""

import numpy as np
import pytest
import soundfile as sf

from downstream.datamodule import DataConfig
from downstream.iemocap import load_iemocap
from downstream.tasks import preset
from downstream.train import train_and_evaluate
from upstream_quant.loading import load_upstream

# each emotion a tone shape: (f0, glide, loudness); "exc" is read as happy, "fru" and "xxx" dropped
SHAPES = {"neu": (150, 0.0, 0.2), "hap": (300, 0.5, 0.3), "exc": (300, 0.5, 0.3), "ang": (220, -0.2, 0.6),
          "sad": (110, -0.4, 0.08), "fru": (180, 0.1, 0.3), "xxx": (200, 0.0, 0.2)}


def _tone(f0, glide, level, rng) -> np.ndarray:
    t = np.arange(12000) / 16000
    f = f0 * (1 + glide * t) * (1 + 0.03 * rng.standard_normal())
    wav = np.sin(2 * np.pi * np.cumsum(f) / 16000) * np.hanning(len(t))
    return (level * wav + 0.005 * rng.standard_normal(len(t))).astype(np.float32)


def write_iemocap(root, per_label: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    for s in range(1, 6):
        for gender in "FM":
            dialog = f"Ses0{s}{gender}_impro01"
            lines = ["% header line, not a label", ""]
            for label, shape in SHAPES.items():
                for i in range(per_label if label not in ("fru", "xxx") else 1):
                    utt = f"{dialog}_{gender}{label}{i:02d}"
                    wav = root / f"Session{s}" / "sentences" / "wav" / dialog / f"{utt}.wav"
                    wav.parent.mkdir(parents=True, exist_ok=True)
                    sf.write(wav, _tone(*shape, rng), 16000)
                    lines.append(f"[1.0000 - 1.7500]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]")
            table = root / f"Session{s}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            table.parent.mkdir(parents=True, exist_ok=True)
            table.write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    return write_iemocap(tmp_path_factory.mktemp("iemocap") / "IEMOCAP")


def test_reader_gives_four_classes_and_leave_one_session_out_folds(iemocap):
    test = load_iemocap(iemocap, ["fold1_test"])
    # per session: 2 dialogs x (neu, hap, exc, ang, sad) x 3 = 30 kept; fru and xxx dropped (2 each)
    assert len(test) == 30 and {u.label for u in test.utterances} == {"neu", "hap", "ang", "sad"}
    assert all(u.id.startswith("Ses01") for u in test.utterances)
    assert test.dropped.counts == {"label 'fru' outside the four classes": 2, "label 'xxx' outside the four classes": 2}
    train, dev = load_iemocap(iemocap, ["fold1_train"]), load_iemocap(iemocap, ["fold1_dev"])
    assert len(train) + len(dev) == 4 * 30 and len(dev) == 24
    assert not {u.id for u in train.utterances} & {u.id for u in dev.utterances}
    assert not any(u.id.startswith("Ses01") for u in train.utterances + dev.utterances)
    assert {u.speaker for u in load_iemocap(iemocap, ["fold5_test"]).utterances} == {"Ses05F", "Ses05M"}


def test_reader_names_what_is_wrong(iemocap, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_iemocap(tmp_path / "absent", ["fold1_test"])
    with pytest.raises(ValueError, match="foldK_train, foldK_dev or foldK_test"):
        load_iemocap(iemocap, ["fold6_test"])
    with pytest.raises(FileNotFoundError, match="Session1/dialog/EmoEvaluation not found"):
        load_iemocap(tmp_path, ["fold1_test"])
    (iemocap / "Session2" / "sentences" / "wav" / "Ses02F_impro01" / "Ses02F_impro01_Fneu00.wav").rename(tmp_path / "moved.wav")
    try:
        corpus = load_iemocap(iemocap, ["fold2_test"])
        assert corpus.dropped.counts["labelled utterance without its wav"] == 1 and len(corpus) == 29
    finally:
        (tmp_path / "moved.wav").rename(iemocap / "Session2" / "sentences" / "wav" / "Ses02F_impro01" / "Ses02F_impro01_Fneu00.wav")


def test_er_head_learns_the_emotions_of_an_unseen_session(iemocap, tmp_path):
    data = DataConfig("iemocap", str(iemocap), train=("fold1_train",), dev=("fold1_dev",), test=("fold1_test",))
    cfg = preset("superb_er").with_(lr=1e-2, max_steps=60, batch_size=16, val_every_epochs=5, cache_features=True,
                                    normalize=True)
    result = train_and_evaluate(load_upstream("fbank", device="cpu"), cfg, data, tmp_path / "er", device="cpu", progress=False)
    assert result["metrics"]["test_acc"] >= 75.0  # chance is 25 %

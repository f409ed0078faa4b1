"""Speaker tasks SID and ASV: the VoxCeleb1 reader on a fixture in the release's layout, the
heads trained on tone "speakers" made here, and EER/minDCF against hand-computed values."""

import numpy as np
import pytest
import soundfile as sf

from downstream import metrics
from downstream.datamodule import DataConfig
from downstream.tasks import preset
from downstream.train import evaluate, train_and_evaluate
from downstream.voxceleb1 import load_voxceleb1
from upstream_quant.loading import load_upstream

TRAIN_SPEAKERS = tuple(f"id1000{k}" for k in range(1, 9))
TEST_SPEAKERS = ("id10270", "id10271", "id10272")


def _voice(f0: float, rng) -> np.ndarray:
    """A second of a harmonic tone at ``f0`` with a random glide: a "speaker" with its pitch and timbre."""
    t = np.arange(16000) / 16000
    glide = f0 * (1 + 0.05 * rng.uniform(-1, 1) * t)
    phase = 2 * np.pi * np.cumsum(glide) / 16000
    wav = sum(np.sin(k * phase) / k for k in range(1, 6)) * np.hanning(len(t))
    return (0.2 * wav + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_voxceleb1(root, per_speaker: int = 6, seed: int = 0):
    """VoxCeleb1's layout: dev/wav and test/wav speaker trees, iden_split.txt and veri_test.txt."""
    rng = np.random.default_rng(seed)
    split_lines, test_files = [], {}
    # pitches interleaved: a test speaker's lies between two training speakers'
    speakers = [(k, s, "dev") for k, s in enumerate(TRAIN_SPEAKERS)] + [(2 * k + 1.5, s, "test") for k, s in enumerate(TEST_SPEAKERS)]
    for k, spk, part in speakers:
        for i in range(per_speaker):
            rel = f"{spk}/vid{i % 2}/{i + 1:05d}.wav"
            path = root / part / "wav" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, _voice(110.0 * 1.15**k, rng), 16000)
            split_lines.append(f"{3 if i == per_speaker - 1 else 2 if i >= per_speaker - 3 else 1} {rel}")
            if part == "test":
                test_files.setdefault(spk, []).append(rel)
    tested = [(spk, f) for spk, files in test_files.items() for f in files]
    trials = [f"{int(a[0] == b[0])} {a[1]} {b[1]}" for i, a in enumerate(tested) for b in tested[i + 1:]]
    (root / "iden_split.txt").write_text("\n".join(split_lines) + "\n")
    (root / "veri_test.txt").write_text("\n".join(trials) + "\n")
    return root


@pytest.fixture(scope="module")
def vox(tmp_path_factory):
    return write_voxceleb1(tmp_path_factory.mktemp("vox") / "VoxCeleb1")


def test_reader_reads_identification_and_verification_splits(vox):
    train = load_voxceleb1(vox, ["train"])
    assert len(train) == 11 * 3 and {u.label for u in train.utterances} == {*TRAIN_SPEAKERS, *TEST_SPEAKERS}
    assert train.utterances[0].id == "id10001-vid0-00001" and train.trials is None
    assert len(load_voxceleb1(vox, ["test"])) == 11
    sv_train = load_voxceleb1(vox, ["sv_train"])
    assert {u.speaker for u in sv_train.utterances} == set(TRAIN_SPEAKERS)  # no trial speaker is trained on
    assert all(not u.id.endswith("00005") for u in sv_train.utterances)  # identification-dev is sv_dev's
    sv_dev = load_voxceleb1(vox, ["sv_dev"])
    assert len(sv_dev) == 8 * 2 and {t for t, _, _ in sv_dev.trials} == {0, 1}
    sv_test = load_voxceleb1(vox, ["sv_test"])
    assert len(sv_test.trials) == 18 * 17 // 2 and len(sv_test) == 18
    assert sv_test.trials[0] == (1, "id10270-vid0-00001", "id10270-vid1-00002")


def test_reader_names_what_is_wrong(vox, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_voxceleb1(tmp_path / "absent", ["train"])
    with pytest.raises(FileNotFoundError, match="iden_split.txt or veri_test_class.txt"):
        load_voxceleb1(tmp_path, ["train"])
    with pytest.raises(ValueError, match="split must be one of"):
        load_voxceleb1(vox, ["iden"])
    with pytest.raises(ValueError, match="mix identification and verification"):
        load_voxceleb1(vox, ["train", "sv_test"])
    broken = write_voxceleb1(tmp_path / "broken", per_speaker=4)
    (broken / "iden_split.txt").write_text((broken / "iden_split.txt").read_text() + "4 nonsense\n1 id10009/v/00001.wav\n")
    (broken / "veri_test.txt").write_text((broken / "veri_test.txt").read_text() + "1 id10270/x/1.wav id10270/y/2.wav\n")
    corpus = load_voxceleb1(broken, ["train"])
    assert corpus.dropped.counts == {"malformed split line": 1, "listed file not under ROOT/*/wav": 1}
    test = load_voxceleb1(broken, ["sv_test"])
    assert test.dropped.counts["trial naming a missing utterance"] == 1 and len(test.trials) == 12 * 11 // 2
    (broken / "veri_test.txt").write_text("0 id10270/vid0/00001.wav id10271/vid1/00002.wav\n")
    with pytest.raises(ValueError, match="veri_test.txt.*no same-speaker trial"):
        load_voxceleb1(broken, ["sv_test"])


def test_eer_and_min_dcf_on_known_score_lists():
    one = lambda s, t: (metrics.eer(np.array(s), np.array(t), np.ones((1, len(s))))[0],  # noqa: E731
                        metrics.min_dcf(np.array(s), np.array(t), np.ones((1, len(s))))[0])
    assert one([0.9, 0.8, 0.3, 0.2], [1, 1, 0, 0]) == (0.0, 0.0)  # separable
    # accept the top 3: one miss in 3 targets, one false alarm in 3 others -> EER 1/3
    eer, dcf = one([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 1, 0, 1, 0, 0])
    assert eer == pytest.approx(100 / 3) and dcf == pytest.approx(1 / 3)
    # the curves cross on a step: accepting the second trial takes false alarms from 0 to 1 while
    # misses stay 1/2; interpolated midway, EER = (1/2 + 1/2) / 2
    assert one([0.9, 0.8, 0.7], [1, 0, 1])[0] == pytest.approx(50.0)
    # misses 2/3 -> 1/3 while false alarms stay 1/2: midway, (1/2 + 1/2) / 2 again, from the other side
    assert one([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 1, 0])[0] == pytest.approx(50.0)
    # misses stay 1/3 while false alarms go 0 -> 1: they meet a third of the way, at 1/3
    assert one([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 1])[0] == pytest.approx(100 / 3)
    # minDCF at P_target 0.01 weighs a false alarm 99 times a miss: the best is to accept nothing but
    # the 1 target above all others, missing 1 of 2 targets -> cost 0.5
    assert one([0.9, 0.8, 0.7], [1, 0, 1])[1] == pytest.approx(0.5)
    weights = np.array([[1, 1, 1, 1], [2, 0, 1, 1]], dtype=float)  # the second drops trial 2, doubles trial 1
    assert metrics.eer(np.array([0.9, 0.4, 0.6, 0.2]), np.array([1, 1, 0, 0]), weights).tolist() == [50.0, 0.0]
    assert metrics.value("eer", metrics.trials([0.9, 0.8, 0.7], [1, 0, 1])) == pytest.approx(50.0)


def test_sid_learns_the_speakers_and_asv_separates_them(vox, tmp_path):
    fbank = load_upstream("fbank", device="cpu")
    data = DataConfig("voxceleb1", str(vox), train=("train",), dev=("dev",), test=("test",))
    sid = train_and_evaluate(fbank, preset("mini_sid").with_(max_steps=80, batch_size=8, lr=1e-2, val_every_epochs=10),
                             data, tmp_path / "sid", device="cpu", progress=False)
    assert len(sid["config"]["labels"]["speakers"]) == 11
    assert sid["metrics"]["test_acc"] >= 70  # chance is 1/11

    sv = DataConfig("voxceleb1", str(vox), train=("sv_train",), dev=("sv_dev",), test=("sv_test",))
    asv = train_and_evaluate(fbank, preset("mini_asv").with_(max_steps=40, batch_size=8, val_every_epochs=10),
                             sv, tmp_path / "asv", device="cpu", progress=False)
    m = asv["metrics"]
    assert m["test_eer"] < 15.0 and 0 <= m["test_min_dcf"] <= 1  # chance is 50 %
    per = asv["per_utterance"]
    assert len(per["ids"]) == 153 and per["ids"][0] == "id10270-vid0-00001|id10270-vid1-00002"
    assert metrics.value("eer", [tuple(u) for u in per["scores"]["eer"]]) == pytest.approx(m["test_eer"], abs=1e-3)
    again = evaluate(fbank, asv["checkpoint"], sv)  # the reuse protocol: the same head, the same trials
    assert again["metrics"]["test_eer"] == pytest.approx(m["test_eer"])


def test_a_suite_row_of_asv_keeps_its_trials_and_the_table_gives_eer_with_an_interval(vox, tmp_path):
    from bench.results import runs_frame
    from bench.runner import run_suite
    from bench.suites import load_suite
    from bench.tables import markdown, suite_table

    path = tmp_path / "sv.toml"
    path.write_text(f'''name = "sv"
[data.vox]
layout = "voxceleb1"
root = "{vox}"
train = ["sv_train"]
dev = ["sv_dev"]
test = ["sv_test"]
[schedule.asv]
preset = "mini_asv"
max_steps = 40
batch_size = 8
val_every_epochs = 10
[[runs]]
upstreams = ["fbank"]
quant = ["fp"]
tasks = ["asv"]
data = ["vox"]
''')
    suite = load_suite(str(path))
    summary = run_suite(suite, suite.runs, tmp_path / "store", device="cpu", progress=False)
    assert summary["finished"] == 1 and not summary["failed"]
    table = suite_table("sv", tmp_path / "store").set_index("config")
    row = table.loc["fbank/fp/retrain"]
    assert row.vox_eer_lo <= row.vox_eer <= row.vox_eer_hi and 0 <= row.vox_min_dcf <= 1
    stored = runs_frame("sv", tmp_path / "store").iloc[0]
    assert len(stored.per_utterance["scores"]["eer"]) == 153  # every trial's (score, target), for the bootstrap
    assert "vox_eer" in markdown(table.reset_index())


def test_a_run_refuses_to_resume_from_a_head_of_other_sizes(vox, tmp_path):
    fbank = load_upstream("fbank", device="cpu")
    sv = DataConfig("voxceleb1", str(vox), train=("sv_train",), dev=("sv_dev",), test=("sv_test",))
    small = preset("mini_asv").with_(max_steps=4, batch_size=8, val_every_epochs=1)
    train_and_evaluate(fbank, small, sv, tmp_path / "asv", device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"holds another head than this run builds \(head.proj.weight is \(128, 240\) "
                                         r"there, \(64, 240\) now\).*delete"):
        train_and_evaluate(fbank, small.with_(proj=64), sv, tmp_path / "asv", device="cpu", progress=False)

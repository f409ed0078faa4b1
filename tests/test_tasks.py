"""The task registry and the plug-in tasks PR (phone CTC) and IC (slot classification), on tiny
data made here."""

import shutil

import numpy as np
import pytest
import soundfile as sf

from downstream.datamodule import DataConfig
from downstream.fluent_commands import load_fluent_commands
from downstream.phonemes import LexiconError, Phonemizer, espeak_lexicon
from downstream.tasks import TASKS, get_task, preset
from downstream.train import evaluate, train_and_evaluate
from upstream_quant.loading import load_upstream

LEXICON = "GO G OW\nLEFT L EH F T\nSTOP S T AA P\nNOW N AW\n"


def _chirp(f0: float, rng) -> np.ndarray:
    t = np.arange(16000) / 16000
    wav = np.sin(2 * np.pi * (f0 + 400 * t) * t) * np.hanning(len(t)) + 0.01 * rng.standard_normal(len(t))
    return (0.3 * wav).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_pr(tmp_path_factory):
    """Two utterances in LibriSpeech layout and a lexicon file for their words (train = dev = test)."""
    base = tmp_path_factory.mktemp("pr")
    d = base / "corpus" / "train" / "1" / "1"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, (words, f0) in enumerate((("GO LEFT", 200.0), ("STOP NOW", 600.0))):
        sf.write(d / f"1-1-{i:04d}.flac", _chirp(f0, rng), 16000)
        lines.append(f"1-1-{i:04d} {words}\n")
    (d / "1-1.trans.txt").write_text("".join(lines))
    (base / "lexicon.txt").write_text(LEXICON)
    return DataConfig("librispeech", str(base / "corpus"), train=("train",), dev=("train",), test=("train",)), base / "lexicon.txt"


def test_registry_names_every_task_and_its_presets():
    assert {"asr", "ks", "pr", "ic", "sid", "asv"} <= set(TASKS)
    for name, spec in TASKS.items():
        assert spec.presets and all(preset(p, name).task == name for p in spec.presets)
        assert spec.headline == f"test_{spec.metrics[0]}" and spec.mode in ("min", "max")
    assert get_task("pr").mode == "min" and get_task("ic").mode == "max"
    with pytest.raises(ValueError, match="unknown task 'vad'"):
        get_task("vad")
    with pytest.raises(ValueError, match="preset 'mini_asr' unknown for task 'pr'"):
        preset("mini_asr", "pr")


def test_phone_recognition_memorises_and_reuses(tiny_pr, tmp_path):
    data, lexicon = tiny_pr
    fbank = load_upstream("fbank", device="cpu")
    cfg = preset("mini_pr").with_(lexicon=str(lexicon), max_steps=200, batch_size=2, val_every_epochs=2)
    result = train_and_evaluate(fbank, cfg, data, tmp_path / "pr", device="cpu", progress=False)
    assert result["config"]["labels"] == {"phones": ["AA", "AW", "EH", "F", "G", "L", "N", "OW", "P", "S", "T"]}
    assert result["metrics"]["test_per"] == 0.0
    assert result["dev_curve"][0][1] > 0.0
    again = evaluate(fbank, result["checkpoint"], data, device="cpu")  # the inventory comes with the checkpoint
    assert again["metrics"]["test_per"] == 0.0


def test_pr_without_its_inventory_or_with_a_missing_word_is_refused(tiny_pr, tmp_path):
    data, lexicon = tiny_pr
    from downstream.features import FrozenUpstream
    from downstream.tasks import make_task

    with pytest.raises(ValueError, match="phone inventory"):
        make_task(FrozenUpstream(load_upstream("fbank", device="cpu")), preset("mini_pr"))
    with pytest.raises(LexiconError, match="'RIGHT' is not in the lexicon"):
        Phonemizer(str(lexicon)).phones("GO RIGHT")
    with pytest.raises(LexiconError, match="no such file"):
        Phonemizer(str(tmp_path / "none.txt"))


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is installed by scripts/setup.sh")
def test_espeak_lexicon_gives_phones_per_word_without_stress():
    lex = espeak_lexicon(("ZERO", "LIGHT", "KITCHEN", "ZERO"))
    assert set(lex) == {"ZERO", "LIGHT", "KITCHEN"}
    assert lex["LIGHT"] == ("l", "aI", "t") and lex["KITCHEN"][0] == "k"
    assert not any("'" in p or "," in p for phones in lex.values() for p in phones)
    p = Phonemizer("espeak")
    assert p.phones("LIGHT ZERO") == lex["LIGHT"] + lex["ZERO"]


# IC: three slots, each value a tone; an utterance sounds its action's tone, then its object's.
ACTIONS = {"activate": 300.0, "deactivate": 900.0}
OBJECTS = {"lights": 1500.0, "music": 2400.0}


def _fsc(root, rng):
    (root / "data").mkdir(parents=True)
    t = np.arange(8000) / 16000
    for split, speakers in (("train", range(4)), ("valid", [4]), ("test", [5])):
        rows = [",path,speakerId,transcription,action,object,location"]
        for spk in speakers:
            for action, fa in ACTIONS.items():
                for obj, fo in OBJECTS.items():
                    rel = f"wavs/speakers/s{spk}/{action}-{obj}.wav"
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    wav = np.concatenate([np.sin(2 * np.pi * fa * t), np.sin(2 * np.pi * fo * t)])
                    sf.write(root / rel, (0.3 * wav + 0.02 * rng.standard_normal(len(wav))).astype(np.float32), 16000)
                    rows.append(f"{len(rows) - 1},{rel},s{spk},{action} the {obj},{action},{obj},none")
        (root / "data" / f"{split}_data.csv").write_text("\n".join(rows) + "\n")
    return DataConfig("fluent_speech_commands", str(root), train=("train",), dev=("valid",), test=("test",))


def test_intent_classification_learns_the_slots(tmp_path):
    data = _fsc(tmp_path / "fsc", np.random.default_rng(0))
    train = load_fluent_commands(data.root, ["train"])
    assert len(train) == 16 and train.utterances[0].label == "activate|lights|none"
    fbank = load_upstream("fbank", device="cpu")
    cfg = preset("mini_ic").with_(lr=1e-2, max_steps=60, batch_size=8, val_every_epochs=5)
    result = train_and_evaluate(fbank, cfg, data, tmp_path / "ic", device="cpu", progress=False)
    assert result["config"]["labels"]["slots"] == [["activate", "deactivate"], ["lights", "music"], ["none"]]
    m = result["metrics"]
    assert m["test_acc"] == 100.0 and m["test_action_acc"] == m["test_object_acc"] == 100.0


def test_fluent_commands_reader_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_fluent_commands(tmp_path / "absent", ["train"])
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match="train_data.csv not found"):
        load_fluent_commands(tmp_path, ["train"])
    (tmp_path / "data" / "train_data.csv").write_text("path,speakerId,transcription,action,object\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['location'\]"):
        load_fluent_commands(tmp_path, ["train"])
    with pytest.raises(ValueError, match="split must be one of"):
        load_fluent_commands(tmp_path, ["dev"])


def test_a_task_refuses_data_of_another_layout(tiny_pr, tmp_path):
    data, _ = tiny_pr
    with pytest.raises(ValueError, match="task 'ic' reads data in layout"):
        train_and_evaluate(load_upstream("fbank", device="cpu"), preset("mini_ic"), data, tmp_path / "x", device="cpu",
                           progress=False)
    with pytest.raises(ValueError, match="data layout must be one of"):
        DataConfig("timit", str(tmp_path)).load("train")

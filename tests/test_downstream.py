"""Featurizer, heads and Lightning training on tiny data made here."""

import numpy as np
import pytest
import soundfile as sf
import torch

from downstream.datamodule import DataConfig
from downstream.featurizer import Featurizer
from downstream.speech_commands import CLASSES
from downstream.tasks import TaskConfig, mini_asr
from downstream.train import evaluate, train_and_evaluate
from upstream_quant.loading import load_upstream

WORDS = {"yes": 300.0, "no": 500.0, "up": 700.0, "down": 900.0, "left": 1100.0, "right": 1300.0,
         "on": 1500.0, "off": 1700.0, "stop": 1900.0, "go": 2100.0, "bird": 2500.0}


def test_featurizer_weighted_sum_and_layer_choice():
    states = [torch.full((1, 3, 4), float(i)) + torch.randn(1, 3, 4) for i in range(3)]
    f = Featurizer(3)
    assert f.layer_weights() == [pytest.approx(1 / 3, abs=1e-4)] * 3
    plain = Featurizer(3, normalize=False)
    assert torch.allclose(plain(states), sum(states) / 3, atol=1e-6)
    last = Featurizer(3, layer=-1, normalize=False)
    assert torch.equal(last(states), states[-1]) and last.layer_weights() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="hidden states"):
        f(states[:2])
    with pytest.raises(ValueError, match="out of range"):
        Featurizer(3, layer=5)


@pytest.fixture(scope="module")
def tiny_asr(tmp_path_factory):
    """Two utterances with chirp 'speech' in LibriSpeech layout; train = dev = test (memorisation)."""
    root = tmp_path_factory.mktemp("asr") / "corpus"
    d = root / "train" / "1" / "1"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, (words, f0) in enumerate((("GO LEFT", 200.0), ("STOP NOW", 600.0))):
        t = np.arange(16000) / 16000
        wav = np.sin(2 * np.pi * (f0 + 400 * t) * t) * np.hanning(len(t)) + 0.01 * rng.standard_normal(len(t))
        sf.write(d / f"1-1-{i:04d}.flac", (0.3 * wav).astype(np.float32), 16000)
        lines.append(f"1-1-{i:04d} {words}\n")
    (d / "1-1.trans.txt").write_text("".join(lines))
    return DataConfig("librispeech", str(root), train=("train",), dev=("train",), test=("train",))


def _asr_config(steps: int) -> TaskConfig:
    return mini_asr().with_(proj=32, hidden=32, lstm_layers=1, dropout=0.0, lr=3e-3, max_steps=steps, batch_size=2,
                            specaug=False, cache_features=True, val_every_epochs=1)


def test_asr_memorises_and_reuse_protocol_reproduces(tiny_asr, tmp_path):
    fbank = load_upstream("fbank", device="cpu")
    result = train_and_evaluate(fbank, _asr_config(300), tiny_asr, tmp_path / "run", device="cpu", progress=False)
    assert result["metrics"]["test_wer"] == 0.0 and result["metrics"]["test_cer"] == 0.0
    curve = [wer for _, wer in result["dev_curve"]]
    assert curve[0] > curve[-1] == 0.0
    assert result["feature_cache"]["hits"] > result["feature_cache"]["misses"] > 0
    assert result["featurizer_weights"] == [1.0]
    again = evaluate(fbank, result["checkpoint"], tiny_asr, device="cpu")
    assert again["metrics"]["test_wer"] == 0.0


class _Stop(Exception):
    pass


class _Interrupt:
    """Raises in the middle of an epoch, as a killed run would stop."""

    def __init__(self, at_step: int):
        from lightning.pytorch.callbacks import Callback

        outer = self

        class _CB(Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step == outer.at_step:
                    raise _Stop

        self.at_step, self.callback = at_step, _CB()


def test_interrupted_run_resumes_to_the_same_result(tiny_asr, tmp_path):
    fbank = load_upstream("fbank", device="cpu")
    # 2 steps per epoch, validation every 2 epochs: the cut lands mid-epoch and between validations
    cfg = _asr_config(16).with_(specaug=True, dropout=0.1, lstm_layers=2, batch_size=1, val_every_epochs=2)
    full = train_and_evaluate(fbank, cfg, tiny_asr, tmp_path / "full", device="cpu", progress=False)
    with pytest.raises(_Stop):
        train_and_evaluate(fbank, cfg, tiny_asr, tmp_path / "cut", device="cpu", progress=False,
                           callbacks=[_Interrupt(7).callback])  # mid-epoch
    assert (tmp_path / "cut" / "last.ckpt").is_file()
    resumed = train_and_evaluate(fbank, cfg, tiny_asr, tmp_path / "cut", device="cpu", progress=False)
    assert resumed["steps"] == full["steps"] == 16
    assert resumed["dev_curve"] == full["dev_curve"]
    assert resumed["metrics"] == full["metrics"]


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """A separable keyword set: every class is a tone at its own pitch, in Speech Commands layout."""
    root = tmp_path_factory.mktemp("ks") / "sc"
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    dev, test = [], []
    for word, freq in WORDS.items():
        (root / word).mkdir(parents=True)
        for k in range(6):
            wav = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.02 * rng.standard_normal()) * t) + 0.02 * rng.standard_normal(16000)
            sf.write(root / word / f"spk{k}_nohash_0.wav", wav.astype(np.float32), 16000)
            (dev if k == 4 else test if k == 5 else []).append(f"{word}/spk{k}_nohash_0.wav")
    (root / "_background_noise_").mkdir()
    sf.write(root / "_background_noise_" / "noise.wav", (0.05 * rng.standard_normal(16000 * 40)).astype(np.float32), 16000)
    (root / "validation_list.txt").write_text("\n".join(dev) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return DataConfig("speech_commands", str(root))


def test_keyword_spotting_beats_chance(tones, tmp_path):
    fbank = load_upstream("fbank", device="cpu")
    cfg = TaskConfig(task="ks", lr=1e-2, max_steps=60, batch_size=16, cache_features=True, normalize=True)
    result = train_and_evaluate(fbank, cfg, tones, tmp_path / "ks", device="cpu", progress=False)
    assert result["metrics"]["test_acc"] > 3 * 100 / len(CLASSES)


def test_bad_task_config_is_named():
    with pytest.raises(ValueError, match="task must be"):
        TaskConfig(task="vad")

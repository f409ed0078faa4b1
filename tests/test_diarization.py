"""SD: the Kaldi data-dir reader on a fixture, DER against hand-computed values, and the
diarization head trained on two-"speaker" tone mixtures."""

import numpy as np
import pytest
import soundfile as sf
import torch

from downstream.datamodule import DataConfig
from downstream.diarization import decode_segments, load_diarization
from downstream.tasks import preset
from downstream.tasks.sd import activity, der_units, pit_bce
from downstream.train import train_and_evaluate
from upstream_quant.loading import load_upstream


def _tone(f0: float, n: int, rng) -> np.ndarray:
    t = np.arange(n) / 16000
    return (0.2 * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3)) * (1 + 0.05 * rng.standard_normal())).astype(np.float32)


def write_mixtures(root, count: dict, seed: int = 0):
    """Kaldi data dirs of 2 s recordings: a low voice and a high voice, each speaking one stretch
    at a seeded place, overlapping or not."""
    rng = np.random.default_rng(seed)
    for split, n in count.items():
        d = root / split
        (d / "wav").mkdir(parents=True, exist_ok=True)
        scp, segs, spk = [], [], []
        for i in range(n):
            rec = f"{split}_mix{i:03d}"
            wav = 0.003 * rng.standard_normal(32000).astype(np.float32)
            for s, f0 in (("lo", 150.0), ("hi", 900.0)):
                a = rng.uniform(0.0, 1.0)
                b = a + rng.uniform(0.5, 1.0)
                wav[int(a * 16000): int(b * 16000)] += _tone(f0, int(b * 16000) - int(a * 16000), rng)
                utt = f"{rec}_{s}"
                segs.append(f"{utt} {rec} {a:.3f} {b:.3f}")
                spk.append(f"{utt} {s}{i}")
            sf.write(d / "wav" / f"{rec}.wav", wav, 16000)
            scp.append(f"{rec} wav/{rec}.wav")
        (d / "wav.scp").write_text("\n".join(scp) + "\n")
        (d / "segments").write_text("\n".join(segs) + "\n")
        (d / "utt2spk").write_text("\n".join(spk) + "\n")
    return root


def test_reader_and_reference_activity(tmp_path):
    root = write_mixtures(tmp_path / "mix", {"train": 2})
    corpus = load_diarization(root, ["train"])
    assert [u.id for u in corpus.utterances] == ["train_mix000", "train_mix001"]
    segs = decode_segments(corpus.utterances[0].label)
    assert len(segs) == 2 and {s[0] for s in segs} == {"lo0", "hi0"}
    ref = activity("a 0.000 1.000;b 0.500 2.000", 20, 2.0)  # 0.1 s frames
    assert ref[:, 0].tolist() == [1.0] * 10 + [0.0] * 10 and ref[:, 1].tolist() == [0.0] * 5 + [1.0] * 15
    (root / "train" / "utt2spk").write_text("nobody x\n")
    with pytest.raises(ValueError, match="no usable recordings"):  # every segment lost its speaker
        load_diarization(root, ["train"])
    with pytest.raises(FileNotFoundError, match="missing wav.scp"):
        load_diarization(tmp_path, ["train"])


def test_der_and_pit_loss_on_known_activity():
    ref = torch.tensor([[1, 0], [1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.float)
    assert der_units(ref, ref) == (0, 5)
    assert der_units(ref[:, [1, 0]], ref) == (0, 5)  # speaker labels are arbitrary: the best mapping is taken
    # missed speech: the second speaker never detected -> 2 of 5 reference speaker-frames
    assert der_units(torch.tensor([[1, 0], [1, 0], [1, 0], [0, 0], [0, 0]], dtype=torch.float), ref) == (2, 5)
    # a false alarm in the silent last frame, and a confusion in frame 3 (first speaker for the second)
    pred = torch.tensor([[1, 0], [1, 0], [1, 1], [1, 0], [1, 0]], dtype=torch.float)
    assert der_units(pred, ref) == (2, 5)
    logits = torch.tensor([[[9.0, -9.0], [-9.0, 9.0]]])
    swapped = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert pit_bce(logits, swapped, torch.tensor([2])) < 1e-3  # the permuted labels fit as well


def test_sd_head_learns_who_speaks_when(tmp_path):
    root = write_mixtures(tmp_path / "mix", {"train": 24, "dev": 4, "test": 8})
    data = DataConfig("kaldi_diarization", str(root), train=("train",), dev=("dev",), test=("test",))
    cfg = preset("mini_sd").with_(max_steps=150, batch_size=8, val_every_epochs=5, lr=1e-2)
    result = train_and_evaluate(load_upstream("fbank", device="cpu"), cfg, data, tmp_path / "sd", device="cpu", progress=False)
    assert result["metrics"]["test_der"] < 25.0  # detecting nothing scores 100
    assert len(result["per_utterance"]["ids"]) == 8

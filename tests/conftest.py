import os
import tempfile
from pathlib import Path

import pytest
import torch

# Inventories are cached per test session, never in the user's home.
os.environ.setdefault("BENCH_CACHE", tempfile.mkdtemp(prefix="bench-cache-"))
os.environ["BENCH_OFFLINE"] = "1"  # tests never touch the network

TINY_HUBERT = {
    "model_cfg": {
        "label_rate": 50.0, "final_dim": 16, "encoder_layers": 2, "encoder_embed_dim": 32,
        "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4,
        "conv_feature_layers": "[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2",
        "conv_pos": 16, "conv_pos_groups": 4,
    },
    "task_cfg": {"label_rate": 50.0, "sample_rate": 16000, "normalize": False},
}

TINY_DISTILLER = {
    "extractor_conv_feature_layers": "[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2",
    "conv_pos": 16, "conv_pos_groups": 4, "encoder_layers": 1, "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4, "final_dim": 32,
    "out_layer_type": "expand-last", "n_tasks": 2, "task_emb_type": "expand-last", "pred_layer_id": [1, 2],
}


@pytest.fixture
def tiny_hubert():
    from upstream_quant.upstreams.hubert import _build

    torch.manual_seed(0)
    return _build(TINY_HUBERT["model_cfg"], TINY_HUBERT["task_cfg"], [list("abcdefgh")], "hubert_base").eval()


@pytest.fixture
def tiny_distiller():
    from upstream_quant.upstreams.distiller import build_distiller

    torch.manual_seed(0)
    return build_distiller(TINY_DISTILLER, "distilhubert").eval()


@pytest.fixture
def batch():
    torch.manual_seed(1)
    wavs = torch.randn(2, 16000)
    lens = torch.tensor([16000, 11000])
    wavs[1, 11000:] = 0
    return wavs, lens


def tiny_corpus(tmp_path: Path) -> Path:
    """Three 0.75 s tones with one-word transcripts, LibriSpeech layout (split ``train``)."""
    import numpy as np
    import soundfile as sf

    d = tmp_path / "corpus" / "train" / "1" / "1"
    d.mkdir(parents=True)
    t = np.arange(12000) / 16000
    lines = []
    for i, (words, f0) in enumerate((("GO", 200.0), ("STOP", 500.0), ("UP", 800.0))):
        sf.write(d / f"1-1-{i:04d}.flac", (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32), 16000)
        lines.append(f"1-1-{i:04d} {words}\n")
    (d / "1-1.trans.txt").write_text("".join(lines))
    return tmp_path / "corpus"


def tiny_suite_toml(root: str, runs: str, **schedule) -> str:
    """A one-data-table suite on `tiny_corpus` with a tiny ASR head (`schedule` overrides or adds
    fields) and the given ``[[runs]]`` text."""
    fields = {"preset": "mini_asr", "proj": 16, "hidden": 16, "lstm_layers": 1, "max_steps": 60, "batch_size": 1,
              "specaug": False} | schedule
    lines = "\n".join(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, str) else v}".replace("'", '"')
                      for k, v in fields.items())
    return (f'name = "tiny"\n[data.chirps]\nlayout = "librispeech"\nroot = "{root}"\ntrain = ["train"]\ndev = ["train"]\n'
            f'test = ["train"]\n\n[schedule.asr]\n{lines}\n\n{runs.strip()}\n')

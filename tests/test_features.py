"""Cached features do not depend on the batch an utterance first came in: a resumed run or another
seed meets it in another batch than an uninterrupted run did, and must train on the same bits."""

import torch

from downstream.features import FeatureCache, FrozenUpstream
from upstream_quant.loading import load_upstream


def _clips(n: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(24000) / 16000
    return [(0.2 * torch.sin(2 * torch.pi * (150 + 40 * i) * t) + 0.05 * torch.randn(24000, generator=gen))[: 8000 + 1000 * i]
            for i in range(n)]


def _batch(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([c.numel() for c in clips])
    wavs = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        wavs[i, : c.numel()] = c
    return wavs, lengths


def test_cached_features_are_the_same_whatever_the_batch():
    upstream = load_upstream("whisper_tiny_en", device="cpu")  # the real encoder: real matrix-product shapes
    clips = _clips(12)
    keys = [f"u{i}" for i in range(12)]
    big = FrozenUpstream(upstream, FeatureCache())
    states_big, _ = big(*_batch(clips), keys=keys)
    small = FrozenUpstream(upstream, FeatureCache())  # a resumed run: empty cache, other companions
    states_small, lens = small(*_batch(clips[4:7]), keys=keys[4:7])
    for layer_big, layer_small in zip(states_big, states_small):
        for j, i in enumerate(range(4, 7)):
            n = int(lens[j])
            assert torch.equal(layer_big[i, :n], layer_small[j, :n])
    assert small.cache.misses == 3 and big.cache.misses == 12

"""A frozen upstream as a feature source: eval mode, no gradients, optional per-utterance cache.

The cache exists because on small corpora the upstream forward dominates training time and its
output never changes (frozen weights, no cropping); it is bounded in memory and spills to disk
under a second bound, after which features are simply recomputed.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch


class FeatureCache:
    """utterance id -> hidden states (fp16, unpadded), in memory up to ``max_mb``, then on disk up to ``disk_mb``."""

    def __init__(self, max_mb: float = 1024, spill_dir: str | Path | None = None, disk_mb: float = 8192):
        self.max_bytes, self.disk_bytes = max_mb * 1e6, disk_mb * 1e6
        self.spill_dir = Path(spill_dir) if spill_dir else None
        self.memory: dict[str, list[torch.Tensor]] = {}
        self.on_disk: set[str] = set()
        self.used = self.used_disk = 0.0
        self.hits = self.misses = 0

    def get(self, key: str) -> list[torch.Tensor] | None:
        if key in self.memory:
            self.hits += 1
            return self.memory[key]
        if key in self.on_disk:
            self.hits += 1
            return torch.load(self._path(key), weights_only=True)
        self.misses += 1
        return None

    def _path(self, key: str) -> Path:
        import hashlib

        return self.spill_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.pt"

    def put(self, key: str, states: list[torch.Tensor]) -> None:
        states = [s.detach().to("cpu", torch.float16) for s in states]
        size = sum(s.numel() * 2 for s in states)
        if self.used + size <= self.max_bytes:
            self.memory[key] = states
            self.used += size
        elif self.spill_dir is not None and self.used_disk + size <= self.disk_bytes:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            torch.save(states, self._path(key))
            self.on_disk.add(key)
            self.used_disk += size


class FrozenUpstream:
    """Calls an upstream under no_grad in eval mode (bf16 autocast on CUDA); not an nn.Module on
    purpose, so task checkpoints hold only the featurizer and head."""

    def __init__(self, upstream: torch.nn.Module, cache: FeatureCache | None = None):
        self.upstream = upstream.eval().requires_grad_(False)
        self.cache = cache
        self.seconds = 0.0

    @property
    def num_hidden_states(self) -> int:
        return self.upstream.num_hidden_states

    @property
    def hidden_size(self) -> int:
        return self.upstream.hidden_size

    def layer_index(self, layer: int | str | None) -> int | None:
        """A featurizer layer: an index, None (weighted sum), or ``"last_transformer"``: the
        upstream's last transformer layer (DistilHuBERT's hidden states end with its prediction
        heads, so -1 is not that layer)."""
        if layer == "last_transformer":
            return getattr(self.upstream, "last_transformer_state", self.num_hidden_states - 1)
        if isinstance(layer, str):
            raise ValueError(f"featurizer layer {layer!r}: expected an index, none (weighted sum) or 'last_transformer'")
        return layer

    def to(self, device: torch.device) -> "FrozenUpstream":
        self.upstream.to(device)
        return self

    def _forward(self, wavs: torch.Tensor, lengths: torch.Tensor):
        device = wavs.device
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        with torch.no_grad(), amp:
            states, lens = self.upstream(wavs, lengths)
        return [s.float() for s in states], lens[-1]

    def __call__(self, wavs: torch.Tensor, lengths: torch.Tensor, keys: list[str] | None = None):
        """(hidden states [B, T, D] each, frame lengths [B])."""
        started = time.perf_counter()
        try:
            if self.cache is None or keys is None:
                return self._forward(wavs, lengths)
            found = [self.cache.get(k) for k in keys]
            for i in [i for i, f in enumerate(found) if f is None]:
                # One utterance at a time: a batched forward's last bits depend on what else is in the
                # batch (matrix products block differently by shape), and a resumed run or another
                # seed meets an utterance first in another batch than an uninterrupted run did; a
                # bit flipped under fp16 rounding then grows through training into another model.
                # Rounded as the cache keeps them, so a fresh process (a resumed run, whose cache
                # starts empty) computes with exactly the features an uninterrupted one reuses.
                n = int(lengths[i])
                states, lens = self._forward(wavs[i : i + 1, :n], lengths[i : i + 1])
                found[i] = [s[0, : int(lens[0])].to(torch.float16) for s in states]
                self.cache.put(keys[i], found[i])
            n_states = len(found[0])
            frame_lens = torch.tensor([f[0].shape[0] for f in found], device=wavs.device)
            padded = [
                torch.nn.utils.rnn.pad_sequence([f[k].to(wavs.device, torch.float32) for f in found], batch_first=True)
                for k in range(n_states)
            ]
            return padded, frame_lens
        finally:
            if wavs.device.type == "cuda":
                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - started

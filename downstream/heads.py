"""SUPERB's downstream heads; they see only features (batch, frames, dim) and frame lengths."""

from __future__ import annotations

import torch
from torch import nn


class ASRHead(nn.Module):
    """Linear projection, a bidirectional LSTM stack and a CTC output layer (SUPERB: 1024, 2 layers, dropout 0.2)."""

    def __init__(self, in_dim: int, vocab: int, proj: int = 1024, hidden: int = 1024, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.proj = nn.Linear(in_dim, proj)
        self.lstm = nn.LSTM(proj, hidden, num_layers=layers, bidirectional=True, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden, vocab)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (batch, frames, vocab)."""
        x = self.proj(x)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.out(self.dropout(out)).log_softmax(-1)


class PooledHead(nn.Module):
    """Linear(D->hidden), mean pooling over valid frames, Linear(hidden->outputs): SUPERB's KS head
    (256 hidden, 12 classes), and IC's with one output per slot value."""

    def __init__(self, in_dim: int, outputs: int, hidden: int = 256):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (batch, classes)."""
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1).to(x.dtype)
        pooled = (self.proj(x) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.out(pooled)


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, time_masks: int = 2, time_width: int = 40,
                 freq_masks: int = 4, freq_width: int = 50, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment's masks on features (SUPERB: 2 time masks up to 40 frames, 4 feature masks up
    to 50 dims). SUPERB's time warp (5) is not applied. Masks use ``generator`` for replay."""
    x = x.clone()
    b, t, d = x.shape
    for i in range(b):
        n = int(lengths[i])
        for _ in range(time_masks):
            w = int(torch.randint(0, min(time_width, max(n // 5, 1)) + 1, (1,), generator=generator))
            s = int(torch.randint(0, max(n - w, 1), (1,), generator=generator))
            x[i, s : s + w] = 0
        for _ in range(freq_masks):
            w = int(torch.randint(0, min(freq_width, d // 8) + 1, (1,), generator=generator))
            s = int(torch.randint(0, max(d - w, 1), (1,), generator=generator))
            x[i, :, s : s + w] = 0
    return x

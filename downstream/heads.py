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


class XVectorHead(nn.Module):
    """SUPERB's ASV head (s3prl sv_voxceleb1, amsoftmax.yaml): Linear(D->512), five TDNN layers
    (contexts 5, 3, 3, 1, 1 at dilations 1, 2, 3, 1, 1; ReLU; 512 wide, the last 1500), statistics
    pooling (mean and standard deviation over the valid frames), then Linear(3000->512), ReLU,
    Linear(512->512), ReLU. ``embed`` is s3prl's inference path: the first of those linears and
    its ReLU, the speaker embedding that trials are scored on. A TDNN is a 1-D convolution over
    frames without padding, so each layer trims its context from the length."""

    LAYERS = ((5, 1), (3, 2), (3, 3), (1, 1), (1, 1))

    def __init__(self, in_dim: int, dim: int = 512, agg_dim: int = 1500):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        widths = [dim] * len(self.LAYERS) + [agg_dim]
        self.tdnn = nn.ModuleList(nn.Conv1d(widths[i], widths[i + 1], k, dilation=d) for i, (k, d) in enumerate(self.LAYERS))
        self.linear1 = nn.Linear(2 * agg_dim, dim)
        self.linear2 = nn.Linear(dim, dim)

    @property
    def trim(self) -> int:
        return sum(d * (k - 1) for k, d in self.LAYERS)

    def _pooled(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        short = self.trim + 1 - x.shape[1]
        if short > 0:  # an utterance shorter than the TDNN's context: pad with zeros (s3prl would fail)
            x = nn.functional.pad(x, (0, 0, 0, short))
        h = self.proj(x).transpose(1, 2)
        for conv in self.tdnn:
            h = torch.relu(conv(h))
        h = h.transpose(1, 2)  # (batch, frames - trim, agg_dim)
        n = (lengths - self.trim).clamp(min=1).to(h.device)
        mask = (torch.arange(h.shape[1], device=h.device)[None, :] < n[:, None]).unsqueeze(-1).to(h.dtype)
        mean = (h * mask).sum(1) / n[:, None]
        var = (((h - mean[:, None]) * mask) ** 2).sum(1) / (n[:, None] - 1).clamp(min=1)
        return torch.cat([mean, var.clamp(min=1e-8).sqrt()], dim=-1)

    def embed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear1(self._pooled(x, lengths)))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear2(self.embed(x, lengths)))


class AMSoftmax(nn.Module):
    """Additive-margin softmax loss (Wang et al. 2018; s3prl's AMSoftmaxLoss, s = 30, m = 0.4):
    cross-entropy over s x cosine(embedding, class weight), the target's cosine lowered by m."""

    def __init__(self, dim: int, classes: int, s: float = 30.0, m: float = 0.4):
        super().__init__()
        self.s, self.m = s, m
        self.weight = nn.Parameter(torch.empty(dim, classes))
        nn.init.xavier_normal_(self.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = nn.functional.normalize(x, dim=1) @ nn.functional.normalize(self.weight, dim=0)
        margin = nn.functional.one_hot(labels, cos.shape[1]).to(cos.dtype) * self.m
        return nn.functional.cross_entropy(self.s * (cos - margin), labels)

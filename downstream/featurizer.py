"""s3prl's Featurizer idea: turn an upstream's list of hidden states into one feature sequence."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Featurizer(nn.Module):
    """Softmax-weighted sum over all hidden states (weights start equal), or one chosen state.

    ``layer``: None for the weighted sum, else an index into the hidden states (-1: the last,
    DistilHuBERT's published protocol). ``normalize`` layer-normalises each state (no affine)
    before summing so the learned weights compare layers, not their scales; s3prl's option of
    the same name defaults to off, which ``normalize=False`` reproduces.
    """

    def __init__(self, num_states: int, layer: int | None = None, normalize: bool = True):
        super().__init__()
        if layer is not None and not -num_states <= layer < num_states:
            raise ValueError(f"featurizer layer {layer} out of range for an upstream with {num_states} hidden states")
        self.num_states, self.layer, self.normalize = num_states, layer, normalize
        self.weights = nn.Parameter(torch.zeros(num_states)) if layer is None else None

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        if len(states) != self.num_states:
            raise ValueError(f"featurizer built for {self.num_states} hidden states, got {len(states)}; "
                             "build the task for this upstream (hidden-state counts differ between upstreams)")
        if self.layer is not None:
            x = states[self.layer]
            return F.layer_norm(x, x.shape[-1:]) if self.normalize else x
        stacked = torch.stack(states, dim=0)
        if self.normalize:
            stacked = F.layer_norm(stacked, stacked.shape[-1:])
        w = F.softmax(self.weights, dim=0).to(stacked.dtype)
        return (w[:, None, None, None] * stacked).sum(0)

    def layer_weights(self) -> list[float]:
        """The softmax weights (a one-hot list for a chosen layer), saved with every result."""
        if self.weights is None:
            onehot = [0.0] * self.num_states
            onehot[self.layer % self.num_states] = 1.0
            return onehot
        return [round(float(x), 5) for x in F.softmax(self.weights.detach().float(), dim=0)]

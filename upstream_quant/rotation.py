"""Incoherence processing: a seeded random rotation of a linear layer's inputs before rounding.

A few input channels of a speech encoder carry far more energy than the rest, and a per-row
(or per-group) scale spends most of its levels on the weights that meet them. Rotating the
inputs, x -> R x, and the weight with them, W -> W R^T (so W x is unchanged), spreads that energy
over all channels, and the rotated weight rounds with far less output error (QuIP#, QuaRot). The
rotation is applied to the inputs at run time, by the quantized layer.

R = (Q_m kron H_b / sqrt(b)) diag(s): random signs s, a Walsh-Hadamard transform over blocks of
b inputs (b the largest power of two dividing the width: 128 for 384, 256 for 768), and, when the
width is m > 1 such blocks, a random m x m orthogonal matrix mixing the blocks. Everything is
drawn from one seed, so a packed file stores the seed, not the matrix. The transform costs
log2(b) + m additions per input element, against the layer's `out` multiply-adds.
Written by hand: no maintained package offers a CPU/CUDA Hadamard transform for torch
(fast-hadamard-transform is a CUDA-only extension).
"""
from __future__ import annotations

import zlib
from functools import lru_cache

import torch


class RotationError(ValueError):
    """A layer whose inputs cannot be rotated (a width with no power-of-two block)."""


def block_size(width: int) -> int:
    """The largest power of two dividing ``width``: the Hadamard block."""
    b = width & -width
    if width < 2 or b < 2:
        raise RotationError(f"an input width of {width} has no even Hadamard block; rotation needs a width divisible by 2")
    return b


def rotation_ops(width: int) -> int:
    """Additions (or multiply-adds) per input element: log2(b) butterflies, m for the block mix."""
    b = block_size(width)
    m = width // b
    return b.bit_length() - 1 + (m if m > 1 else 0)


def layer_seed(name: str) -> int:
    """The seed of a layer's rotation, from its name (stable across runs and machines)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


@lru_cache(maxsize=256)
def _factors(width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.rand(width, generator=g) < 0.5, -1.0, 1.0)
    m = width // block_size(width)
    if m == 1:
        return signs, None
    q, r = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    return signs, (q * torch.sign(torch.diagonal(r))).float()


def fwht(x: torch.Tensor) -> torch.Tensor:
    """The unnormalised Walsh-Hadamard transform over the last dimension (a power of two), in
    Sylvester's order: log2(n) butterfly steps."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


def rotate(x: torch.Tensor, seed: int) -> torch.Tensor:
    """R x over the last dimension (each row of a weight: W R^T; each input vector: R x)."""
    width = x.shape[-1]
    signs, mix = _factors(width, seed)
    b = block_size(width)
    y = fwht((x * signs.to(x.device, x.dtype)).reshape(*x.shape[:-1], width // b, b)) * (b ** -0.5)
    if mix is not None:
        y = torch.einsum("ij,...jb->...ib", mix.to(x.device, x.dtype), y)
    return y.reshape(x.shape)


def unrotate(x: torch.Tensor, seed: int) -> torch.Tensor:
    """R^T x over the last dimension, the inverse of ``rotate``: a weight W_r kept in the rotated
    basis acts on unrotated inputs as unrotate(W_r) = W_r R (rows), so a training forward rotates
    the weight's out x in entries once instead of every frame's input."""
    width = x.shape[-1]
    signs, mix = _factors(width, seed)
    b = block_size(width)
    y = x.reshape(*x.shape[:-1], width // b, b)
    if mix is not None:
        y = torch.einsum("ji,...jb->...ib", mix.to(x.device, x.dtype), y)
    return (fwht(y) * (b ** -0.5)).reshape(x.shape) * signs.to(x.device, x.dtype)


def rotate_hessian(hessian: torch.Tensor, seed: int) -> torch.Tensor:
    """R H R^T: the statistics X^T X of the rotated inputs, from the original ones."""
    return rotate(rotate(hessian, seed).T, seed).T

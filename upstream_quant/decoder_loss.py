"""Label-free distillation through a model's own text decoder (Whisper's): the quantized encoder
is trained so that the frozen decoder reading it predicts what it predicts reading the
full-precision encoder.

Why: a loss on the encoder's hidden states weights every channel and frame alike, while the
decoder reads a few directions of the last state through cross-attention; at 2 bits a
hidden-state loss that still falls leaves encoders whose transcripts are empty (docs/quantization.md,
"Two and three bits on a real decoder"). Here the target is the decoder's next-token
distribution, teacher-forced on the full-precision model's own greedy transcript (a pseudo-label:
no transcript of the audio is read), and the loss is KL(teacher || student) summed over the
vocabulary and averaged over the transcript's tokens, its end-of-text included (an early end is
the failure to prevent).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .upstreams.whisper_text import EOT, PROMPT


def text_decoder(upstream: nn.Module) -> nn.Module:
    """The upstream's own frozen text decoder, or a one-line error naming the upstream (before
    any work: a decoder loss on a model without a decoder cannot be trained)."""
    decoder = upstream.text_decoder() if hasattr(upstream, "text_decoder") else None
    if decoder is None:
        name = getattr(upstream, "name", type(upstream).__name__)
        raise ValueError(f"a decoder loss needs an upstream with its own text decoder (whisper_tiny_en); {name} has none: "
                         "use the hidden-state loss")
    return decoder


def forcing_inputs(ids: list[list[int]], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Transcripts (token ids) as teacher-forcing inputs: (tokens, mask), tokens = prompt +
    transcript (padded with EOT), mask marking the positions whose next token is scored (each
    transcript token and the EOT after it)."""
    longest = max(len(x) for x in ids)
    tokens = torch.full((len(ids), len(PROMPT) + longest), EOT, dtype=torch.long, device=device)
    mask = torch.zeros(tokens.shape, dtype=torch.bool, device=device)
    for i, row in enumerate(ids):
        tokens[i, : len(PROMPT)] = torch.tensor(PROMPT)
        tokens[i, len(PROMPT): len(PROMPT) + len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, len(PROMPT) - 1: len(PROMPT) + len(row)] = True
    return tokens, mask


def decoder_kl(decoder: nn.Module, student: torch.Tensor, teacher: torch.Tensor, tokens: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
    """Mean over scored positions of KL(p_teacher || p_student), the decoder reading the
    teacher's and the student's encoder outputs with the same tokens; gradients reach only the
    student's encoder output."""
    decoder = decoder.to(student.device)
    with torch.no_grad():
        target = F.log_softmax(decoder.logits(tokens, teacher.to(decoder.embed_tokens.weight.dtype)).float(), -1)
    pred = F.log_softmax(decoder.logits(tokens, student.to(decoder.embed_tokens.weight.dtype)).float(), -1)
    per_token = (target.exp() * (target - pred)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)

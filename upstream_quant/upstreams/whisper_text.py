"""Whisper tiny.en's own text decoder, in plain torch, from the same CTranslate2 file as the encoder.

An encoder quantized by this project is judged end to end by the decoder it was trained with:
greedy decoding of English transcripts (no timestamps) from the encoder's last hidden state.
Plain torch rather than ctranslate2 (a native package, and its ``generate`` would need our
encoder output copied into its own storage) or transformers (a large install for 29 M
parameters of decoder); a test checks the logits against transformers' ``WhisperForConditionalGeneration``
built from the same weights. The decoder is never quantized: it is the model's "head".
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EOT, SOT, NO_TIMESTAMPS, FIRST_TIMESTAMP = 50256, 50257, 50362, 50363
PROMPT = (SOT, NO_TIMESTAMPS)  # tiny.en: English only, no language or task tokens
MAX_TOKENS = 224  # Whisper's sample_len: half the decoder's 448 positions


class WhisperAttention(nn.Module):
    """Multi-head self-attention with Whisper's projections (k has no bias); batch-first."""

    batch_first = True

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class DecoderAttention(WhisperAttention):
    """Causal self-attention, or cross-attention over the encoder output (``source``)."""

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        src = x if source is None else source
        split = lambda y: y.view(b, y.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(src)), split(self.v_proj(src))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=source is None and mask is None)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn_norm, self.self_attn = nn.LayerNorm(dim), DecoderAttention(dim, heads)
        self.cross_attn_norm, self.cross_attn = nn.LayerNorm(dim), DecoderAttention(dim, heads)
        self.ffn_norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor, encoded: torch.Tensor, cross_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_norm(x))
        x = x + self.cross_attn(self.cross_attn_norm(x), encoded, cross_mask)
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))


class WhisperTextDecoder(nn.Module):
    """Token embedding (tied output layer), learned positions, pre-norm layers, final norm."""

    def __init__(self, vocab: int = 51864, dim: int = 384, layers: int = 4, heads: int = 6, ffn: int = 1536,
                 positions: int = 448):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.embed_positions = nn.Parameter(torch.zeros(positions, dim))
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn) for _ in range(layers))
        self.layer_norm = nn.LayerNorm(dim)
        self.tokens: list[str] = []
        self.suppress: list[int] = []
        self.suppress_at_begin: list[int] = []

    def logits(self, tokens: torch.Tensor, encoded: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, tokens, vocab) next-token logits; ``frames``: valid encoder frames per item."""
        x = self.embed_tokens(tokens) + self.embed_positions[: tokens.shape[1]]
        mask = None
        if frames is not None and int(frames.min()) < encoded.shape[1]:
            mask = (torch.arange(encoded.shape[1], device=encoded.device)[None, :] < frames[:, None])[:, None, None, :]
        for layer in self.layers:
            x = layer(x, encoded, mask)
        return self.layer_norm(x) @ self.embed_tokens.weight.T

    @torch.no_grad()
    def greedy(self, encoded: torch.Tensor, frames: torch.Tensor | None = None, max_tokens: int = MAX_TOKENS) -> list[list[int]]:
        """Greedy decoding after <|startoftranscript|><|notimestamps|>, with Whisper's token
        suppression (its non-speech tokens, a blank or end first, and timestamps); text tokens
        only. Keys and values are cached (the encoder's once, the tokens' as they come), so a
        step costs one token's work; `logits` (no cache) is what the test checks against."""
        encoded = encoded.to(self.embed_tokens.weight.dtype)
        b, device = encoded.shape[0], encoded.device
        mask = None
        if frames is not None and int(frames.min()) < encoded.shape[1]:
            mask = (torch.arange(encoded.shape[1], device=device)[None, :] < frames[:, None])[:, None, None, :]
        heads = self.layers[0].self_attn.heads
        split = lambda y: y.view(b, y.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        cross = [(split(layer.cross_attn.k_proj(encoded)), split(layer.cross_attn.v_proj(encoded))) for layer in self.layers]
        cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        tokens = torch.tensor([PROMPT] * b, device=device)
        step_input, done, start = tokens, torch.zeros(b, dtype=torch.bool, device=device), 0
        for step in range(max_tokens):
            x = self.embed_tokens(step_input) + self.embed_positions[start : start + step_input.shape[1]]
            for i, layer in enumerate(self.layers):
                h = layer.self_attn_norm(x)
                q, k, v = split(layer.self_attn.q_proj(h)), split(layer.self_attn.k_proj(h)), split(layer.self_attn.v_proj(h))
                if cache[i] is not None:
                    k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
                cache[i] = (k, v)
                att = F.scaled_dot_product_attention(q, k, v, is_causal=step == 0 and q.shape[2] > 1)
                x = x + layer.self_attn.out_proj(att.transpose(1, 2).reshape(b, x.shape[1], -1))
                q = split(layer.cross_attn.q_proj(layer.cross_attn_norm(x)))
                att = F.scaled_dot_product_attention(q, *cross[i], attn_mask=mask)
                x = x + layer.cross_attn.out_proj(att.transpose(1, 2).reshape(b, x.shape[1], -1))
                x = x + layer.fc2(F.gelu(layer.fc1(layer.ffn_norm(x))))
            logits = (self.layer_norm(x[:, -1]) @ self.embed_tokens.weight.T).float()
            logits[:, self.suppress] = -torch.inf
            logits[:, FIRST_TIMESTAMP:] = -torch.inf
            if step == 0:
                logits[:, self.suppress_at_begin] = -torch.inf
            nxt = torch.where(done, torch.full((b,), EOT, device=device), logits.argmax(-1))
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            done |= nxt == EOT
            if bool(done.all()) or tokens.shape[1] >= self.embed_positions.shape[0]:
                break
            start, step_input = tokens.shape[1] - 1, nxt[:, None]
        out = []
        for row in tokens[:, len(PROMPT):].tolist():
            out.append(row[: row.index(EOT)] if EOT in row else row)
        return out

    def text(self, ids: list[int]) -> str:
        """Byte-level BPE tokens back to text (GPT-2's byte-to-unicode table, inverted)."""
        decoder = _byte_decoder()
        pieces = "".join(self.tokens[i] for i in ids if i < EOT)
        return bytes(decoder[c] for c in pieces if c in decoder).decode("utf-8", errors="replace").strip()

    def transcribe(self, encoded: torch.Tensor, frames: torch.Tensor | None = None) -> list[str]:
        return [self.text(ids) for ids in self.greedy(encoded, frames)]


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable-unicode map (written out: it is 10 lines and the
    tokenizers package is not a dependency)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, n = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, codes)}


def ct2_decoder_state(arrays: dict[str, np.ndarray], layers: int) -> dict[str, torch.Tensor]:
    """Our decoder state dict from CTranslate2's ``decoder/`` arrays (fused q/k/v and k/v split)."""
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
    d = "decoder/"
    state = {"embed_tokens.weight": t(arrays[d + "embeddings/weight"]),
             "embed_positions": t(arrays[d + "position_encodings/encodings"]),
             "layer_norm.weight": t(arrays[d + "layer_norm/gamma"]), "layer_norm.bias": t(arrays[d + "layer_norm/beta"])}
    for i in range(layers):
        src, dst = f"{d}layer_{i}/", f"layers.{i}."
        norms = {"self_attn_norm": "self_attention", "cross_attn_norm": "attention", "ffn_norm": "ffn"}
        for ours, theirs in norms.items():
            state[dst + ours + ".weight"] = t(arrays[f"{src}{theirs}/layer_norm/gamma"])
            state[dst + ours + ".bias"] = t(arrays[f"{src}{theirs}/layer_norm/beta"])
        (qw, kw, vw) = t(arrays[src + "self_attention/linear_0/weight"]).chunk(3)
        (qb, _, vb) = t(arrays[src + "self_attention/linear_0/bias"]).chunk(3)
        state |= {dst + "self_attn.q_proj.weight": qw, dst + "self_attn.q_proj.bias": qb, dst + "self_attn.k_proj.weight": kw,
                  dst + "self_attn.v_proj.weight": vw, dst + "self_attn.v_proj.bias": vb,
                  dst + "self_attn.out_proj.weight": t(arrays[src + "self_attention/linear_1/weight"]),
                  dst + "self_attn.out_proj.bias": t(arrays[src + "self_attention/linear_1/bias"])}
        (kw, vw), (_, vb) = t(arrays[src + "attention/linear_1/weight"]).chunk(2), t(arrays[src + "attention/linear_1/bias"]).chunk(2)
        state |= {dst + "cross_attn.q_proj.weight": t(arrays[src + "attention/linear_0/weight"]),
                  dst + "cross_attn.q_proj.bias": t(arrays[src + "attention/linear_0/bias"]),
                  dst + "cross_attn.k_proj.weight": kw, dst + "cross_attn.v_proj.weight": vw, dst + "cross_attn.v_proj.bias": vb,
                  dst + "cross_attn.out_proj.weight": t(arrays[src + "attention/linear_2/weight"]),
                  dst + "cross_attn.out_proj.bias": t(arrays[src + "attention/linear_2/bias"]),
                  dst + "fc1.weight": t(arrays[src + "ffn/linear_0/weight"]), dst + "fc1.bias": t(arrays[src + "ffn/linear_0/bias"]),
                  dst + "fc2.weight": t(arrays[src + "ffn/linear_1/weight"]), dst + "fc2.bias": t(arrays[src + "ffn/linear_1/bias"])}
    return state

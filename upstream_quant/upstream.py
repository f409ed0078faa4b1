"""The upstream interface every model in this project exposes, and device choice.

Mirrors s3prl's `S3PRLUpstream`: forward(wavs, wavs_len) -> (hidden states, lengths), where
hidden states are all layers (front end first), each (batch, frames, dim).
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
from torch import nn

SAMPLE_RATE = 16_000


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, else $BENCH_DEVICE, else CUDA when available, else CPU."""
    choice = device if device is not None else os.environ.get("BENCH_DEVICE")
    if choice is None or str(choice) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(choice)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(choice)!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def module_device(module: nn.Module) -> torch.device:
    """Where a module's tensors live: its first parameter's or buffer's device (an upstream run by
    ONNX Runtime has buffers only), CPU for one with neither."""
    first = next(iter([*module.parameters(), *module.buffers()]), None)
    return first.device if first is not None else torch.device("cpu")


def conv_output_lengths(lengths: torch.Tensor, convs: Iterable[tuple[int, int]]) -> torch.Tensor:
    """Frames after a stack of unpadded (kernel, stride) convolutions, as the CNN front ends compute them."""
    out = lengths.clone()
    for kernel, stride in convs:
        out = torch.div(out - kernel, stride, rounding_mode="floor") + 1
    return out.clamp(min=0)


def padding_mask(wavs_len: torch.Tensor, max_len: int) -> torch.Tensor:
    """(batch, max_len) bool, True where a position is padding (fairseq's convention)."""
    return torch.arange(max_len, device=wavs_len.device)[None, :] >= wavs_len[:, None]


class Upstream(nn.Module):
    """Base class: subclasses set the attributes below and implement `forward`.

    Attributes:
        name: registry name (e.g. "hubert_base").
        hidden_size: feature dimension of every hidden state.
        num_hidden_states: how many hidden states forward returns.
        downsample_rate: input samples per output frame (320 for 50 Hz).
        group_prefixes: module-path prefix -> accounting group (see accounting.py); the
            longest matching prefix wins.
    """

    name: str = "upstream"
    hidden_size: int
    num_hidden_states: int
    downsample_rate: int = 320
    sample_rate: int = SAMPLE_RATE
    group_prefixes: dict[str, str] = {}

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        raise NotImplementedError

    def forward_one(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """All hidden states of one unpadded utterance (1, samples), with no Python that reads
        tensor values: the path an ONNX export traces with the length as a symbol. Equals
        `forward` on that utterance (tested per family)."""
        raise NotImplementedError(f"{self.name} has no single-utterance path (forward_one), so it cannot be exported")

    def extra_repr(self) -> str:
        return f"name={self.name}, hidden_size={self.hidden_size}, num_hidden_states={self.num_hidden_states}"


def check_batch(wavs: torch.Tensor, wavs_len: torch.Tensor) -> None:
    """Clear errors for the shapes callers get wrong most often."""
    if wavs.dim() != 2:
        raise ValueError(f"wavs must be (batch, samples), got shape {tuple(wavs.shape)}")
    if wavs_len.dim() != 1 or wavs_len.numel() != wavs.shape[0]:
        raise ValueError(f"wavs_len must be (batch,) = ({wavs.shape[0]},), got shape {tuple(wavs_len.shape)}")
    if wavs.device.type != "meta" and int(wavs_len.max()) > wavs.shape[1]:
        raise ValueError(f"wavs_len max {int(wavs_len.max())} exceeds padded length {wavs.shape[1]}")



class FairseqEncoder(Upstream):
    """What the s3prl fairseq-style models (HuBERT, wav2vec 2.0) share: all hidden states are the
    inputs of each transformer layer and the encoder output, as s3prl's experts return them.
    Subclasses give `_extract(wavs, pad) -> (final, feature padding mask)` and add their
    pretraining heads to these groups."""

    group_prefixes = {
        "model.feature_extractor": "cnn",
        "model.layer_norm": "feature_projection",
        "model.post_extract_proj": "feature_projection",
        "model.encoder": "transformer",
        "model.encoder.pos_conv": "positional_conv",
        "model.mask_emb": "other",
    }

    def _setup(self, model: nn.Module, task_cfg) -> None:
        self.model, self.task_cfg = model, task_cfg
        model.feature_grad_mult = 0.0
        model.encoder.layerdrop = 0.0
        for module in model.modules():
            # fairseq attention otherwise calls F.multi_head_attention_forward with the raw
            # projection weights, bypassing the q/k/v/out Linear modules that we quantize,
            # calibrate and count; the explicit path computes the same function.
            if hasattr(module, "skip_embed_dim_check"):
                module.skip_embed_dim_check = True
        self.convs = [(layer[0].kernel_size[0], layer[0].stride[0]) for layer in model.feature_extractor.conv_layers]
        self.hidden_size = model.encoder.embedding_dim
        self.num_hidden_states = len(model.encoder.layers) + 1

    def _extract(self, wavs: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward_one(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """`Upstream.forward_one`: the encoder's steps without the padding it needs in a batch (an
        unpadded utterance has none; the encoder's pad to an even length is masked out of
        attention, so leaving it out changes nothing)."""
        m = self.model
        if self.task_cfg.normalize:
            wav = torch.nn.functional.layer_norm(wav, wav.shape[-1:])
        x = m.layer_norm(m.feature_extractor(wav).transpose(1, 2))
        if m.post_extract_proj is not None:
            x = m.post_extract_proj(x)
        enc = m.encoder
        x = x + enc.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not enc.layer_norm_first:
            x = enc.layer_norm(x)
        states, x = [], x.transpose(0, 1)
        for layer in enc.layers:
            states.append(x.transpose(0, 1))
            x, _ = layer(x, self_attn_padding_mask=None, need_weights=False)
        x = x.transpose(0, 1)
        return states + [enc.layer_norm(x) if enc.layer_norm_first else x]

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor):
        check_batch(wavs, wavs_len)
        wavs_len = wavs_len.to(wavs.device)
        pad = padding_mask(wavs_len, wavs.shape[1])
        if self.task_cfg.normalize:  # per utterance, over its own samples, as s3prl does
            wavs = torch.stack([
                torch.nn.functional.pad(torch.nn.functional.layer_norm(w[:n], (int(n),)), (0, wavs.shape[1] - int(n)))
                for w, n in zip(wavs, wavs_len)
            ])
        # Layer inputs are captured by hooks that live only for this call (so copies of this
        # module never share them).
        inputs: list[torch.Tensor] = []
        handles = [layer.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].transpose(0, 1)))
                   for layer in self.model.encoder.layers]
        try:
            final, feat_pad = self._extract(wavs, pad)
        finally:
            for h in handles:
                h.remove()
        frames = final.shape[1]
        # The encoder pads its input to an even length internally; layer inputs carry that pad
        # frame, so trim every state to the output length (s3prl's expert does the same).
        states = [s[:, :frames] for s in inputs] + [final]
        lengths = (~feat_pad).sum(1) if feat_pad is not None else torch.full_like(wavs_len, frames)
        return states, [lengths] * len(states)

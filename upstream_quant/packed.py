"""Packed export: a quantized upstream as one safetensors file.

Quantized layers store their integer codes bit-packed into uint8 (ceil(n x bits / 8) bytes),
scales in fp16 and zero-points in fp16 (omitted when constant over the layer, e.g. symmetric
codes); every other tensor is stored in fp16; parameters the upstream never uses at inference are
left out. The metadata holds a JSON manifest: format, upstream name and architecture, method and
bits per layer, and the sha256 of the tensor payload, checked on load.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .accounting import under_any
from .io import umask_mode
from .qweight import QuantizedLayer, QuantizedWeight
from .quantize import effective_weight
from .version import package_version

FORMAT = "lowbit-packed/2"  # /2: the sha256 covers the manifest as well as the tensors
READABLE = ("lowbit-packed/1", FORMAT)


class PackedFileError(ValueError):
    """A packed file is corrupted, truncated, or does not describe a model we can rebuild."""


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes < 2^bits -> bytes holding `bits` bits each, most significant first."""
    flat = codes.detach().cpu().reshape(-1).numpy().astype(np.uint8)
    if bits == 8:
        return torch.from_numpy(flat.copy())
    unpacked = np.unpackbits(flat[:, None], axis=1)[:, 8 - bits:]
    return torch.from_numpy(np.packbits(unpacked.reshape(-1)))


def unpack_codes(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape)
    raw = packed.numpy()
    if bits == 8:
        return torch.from_numpy(raw[:n].copy()).reshape(shape)
    bitstream = np.unpackbits(raw)[: n * bits].reshape(n, bits)
    full = np.zeros((n, 8), dtype=np.uint8)
    full[:, 8 - bits:] = bitstream
    return torch.from_numpy(np.packbits(full, axis=1).reshape(-1)).reshape(shape)


def _digest(tensors: dict[str, torch.Tensor], manifest: dict | None = None) -> str:
    """sha256 of the manifest (canonical JSON, its own sha256 field left out) and every tensor's
    name, dtype and bytes: editing either is detected on load."""
    h = hashlib.sha256()
    if manifest is not None:
        h.update(json.dumps({k: v for k, v in manifest.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _unused(upstream) -> tuple[str, ...]:
    return tuple(getattr(upstream, "unused_at_inference", ()))


def save_packed(upstream, path: str | Path) -> Path:
    """Write `upstream` (quantized with `quantize`, or not) as a packed file; returns the path."""
    if not hasattr(upstream, "architecture"):
        raise TypeError("save_packed needs an upstream from load_upstream (it records how to rebuild it)")
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    qnames = set()
    for name, module in upstream.named_modules():
        if not isinstance(module, QuantizedLayer):
            continue
        qnames.update({f"{name}.codes", f"{name}.scale", f"{name}.zero"})
        tensors[f"{name}.codes"] = pack_codes(module.codes, module.bits)
        tensors[f"{name}.scale"] = module.scale.detach().cpu().half()
        zero = module.zero.detach().cpu()
        const_zero = bool((zero == zero.flatten()[0]).all())
        if not const_zero:
            tensors[f"{name}.zero"] = zero.half()
        layers[name] = {
            "kind": module.kind, "shape": list(module.codes.shape), "bits": module.bits,
            "group_size": module.group_size, "method": module.method,
            "zero": float(zero.flatten()[0]) if const_zero else None,
            "act_bits": module.act.bits if module.act is not None else None,
        }
        if module.rotation is not None:  # only where set: files without rotations are as before
            layers[name]["rotation"] = module.rotation
    unused = _unused(upstream)
    for name, t in upstream.state_dict().items():
        if name in qnames or under_any(name, unused):
            continue
        t = t.detach().cpu()
        tensors[name] = t.half() if t.is_floating_point() else t
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    manifest = {
        "format": FORMAT,
        "upstream": upstream.name,
        "architecture": upstream.architecture(),
        "quantization": getattr(upstream, "quantization", None),
        "layers": layers,
        "package_version": package_version(),
    }
    manifest["sha256"] = _digest(tensors, manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"manifest": json.dumps(manifest)})
        tmp.chmod(umask_mode())  # safetensors writes 0600; shared result folders need the umask's mode
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written file left behind
        raise
    return path


def _metadata(path: str | Path) -> dict:
    """A safetensors file's metadata (header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise PackedFileError(f"{path}: not a readable packed file ({err})") from err


def read_manifest(path: str | Path) -> dict:
    meta = _metadata(path)
    if "manifest" not in meta:
        raise PackedFileError(f"{path}: no manifest in the file's metadata")
    try:
        manifest = json.loads(meta["manifest"])
    except ValueError as err:
        raise PackedFileError(f"{path}: the manifest is not valid JSON (corrupted file: {err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PackedFileError(f"{path}: format {found!r}, expected one of {READABLE}")
    return manifest


def is_packed_file(path: str | Path) -> bool:
    """Whether `path` is a safetensors file carrying our manifest (read from its header only; a
    damaged manifest still counts, so that loading it names the damage)."""
    if not Path(path).is_file():  # a checkpoint folder (transformers) is no packed file
        return False
    try:
        return '"lowbit-packed/' in _metadata(path).get("manifest", "")
    except PackedFileError:
        return False


def quantized_layers(model) -> dict[str, str]:
    """Quantized layer -> 'METHOD:BITS' (empty for a full-precision model)."""
    return {name: f"{m.method}:{m.bits}" for name, m in model.named_modules() if isinstance(m, QuantizedLayer)}


def load_packed(path: str | Path, device: str | torch.device | None = None):
    """Rebuild the upstream a packed file describes, with the same dequantized weights; any
    corruption or edit of the file is a `PackedFileError`."""
    from .upstream import pick_device

    path = Path(path)
    if not path.is_file():
        raise PackedFileError(f"packed file not found: {path}")
    manifest = read_manifest(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise PackedFileError(f"{path}: cannot read tensors ({err})") from err
    signed = manifest if manifest["format"] != "lowbit-packed/1" else None  # /1 signed its tensors only
    if _digest(tensors, signed) != manifest.get("sha256"):
        raise PackedFileError(f"{path}: sha256 of the manifest and tensors does not match (corrupted or edited file)")
    try:
        upstream = _rebuild(path, manifest, tensors)
    except PackedFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:  # a signed but inconsistent file
        raise PackedFileError(f"{path}: the manifest does not describe a model we can rebuild ({type(err).__name__}: {err})") from err
    upstream.quantization = manifest.get("quantization")
    upstream.source = str(path)
    return upstream.to(pick_device(device)).eval()


def _rebuild(path: Path, manifest: dict, tensors: dict[str, torch.Tensor]):
    from .upstreams import build_architecture

    upstream = build_architecture(manifest["architecture"], manifest["upstream"])
    for name, spec in manifest["layers"].items():
        try:
            original = upstream.get_submodule(name)
        except AttributeError as err:
            raise PackedFileError(f"{path}: layer {name!r} does not exist in the {manifest['upstream']} architecture") from err
        shape, expected = tuple(spec["shape"]), tuple(effective_weight(original).shape)
        if expected != shape:
            raise PackedFileError(f"{path}: layer {name!r} has shape {shape}, the architecture has {expected}")
        scale = tensors.pop(f"{name}.scale").float()
        zero = tensors.pop(f"{name}.zero").float() if f"{name}.zero" in tensors else torch.full_like(scale, spec["zero"])
        codes = unpack_codes(tensors.pop(f"{name}.codes"), spec["bits"], shape)
        qweight = QuantizedWeight(codes, scale, zero, spec["bits"], spec["group_size"], spec["method"])
        upstream.set_submodule(name, QuantizedLayer(original, qweight, spec.get("act_bits"), spec.get("rotation")))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    missing, unexpected = upstream.load_state_dict(state, strict=False)
    unused = _unused(upstream)
    missing = [k for k in missing if not k.endswith((".codes", ".scale", ".zero"))
               and not under_any(k, unused)]
    if missing or unexpected:
        raise PackedFileError(f"{path}: tensors do not match the architecture (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return upstream

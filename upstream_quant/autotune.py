"""``auto``'s choice per layer, measured: each backend that can run a layer is timed on a probe
input of the layer's own shape against the reference path, and ``auto`` keeps the reference
form unless a low-bit form is faster. A fixed rule could not promise that: on Whisper tiny.en's
384-wide layers unpacking 4-bit codes cost more than the int8 products saved (`bench deploy` of
a 4-bit model ran 2.18x slower than the reference), while on HuBERT Base's 768 x 3072 layers the
same form is 0.7x fp32.

Timings are cached per machine (host, CPU, torch version, threads, device) and layer shape in
``BENCH_CACHE/deploy-probe.json``, so a model's layers of one shape are timed once per machine
and later deployments are immediate. Hand-written because no library times per-layer kernel
choices for PyTorch modules on CPU (torch.compile's autotuning covers its own Triton kernels).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .io import cache_dir, write_atomic
from .qweight import QuantizedLayer

PROBE_FRAMES = 500  # a 10 s utterance at 50 Hz, the length every deploy table is measured at
PROBE_REPS = 5
# a low-bit form must beat the reference by this much to be chosen: below it, timing noise on a
# shared machine could pick a slower form
MARGIN = 0.95

Timer = Callable[[nn.Module, torch.Tensor], float]


def machine_key(device: torch.device) -> str:
    """What a timing depends on besides the layer: this machine, its torch and thread count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return f"{platform.node()}|{cpu}|{gpu}|torch {torch.__version__}|threads {torch.get_num_threads()}|{device.type}"


def layer_key(layer: QuantizedLayer, backend: str) -> str:
    zero = layer.zero.detach()
    zero_kind = "const" if bool((zero == zero.flatten()[0]).all()) else "rows"
    act = layer.act.bits if layer.act is not None else None
    conv = getattr(layer, "conv_args", None)
    return json.dumps([layer.kind, list(layer.codes.shape), layer.bits, layer.group_size, zero_kind, act,
                       sorted(conv.items()) if conv else None, backend])


def probe_input(layer: QuantizedLayer, device: torch.device) -> torch.Tensor:
    """A seeded input of the shape the layer meets in a 10 s utterance (linear: 500 frames;
    convolution: enough samples for about 500 output frames)."""
    gen = torch.Generator().manual_seed(0)
    if layer.kind == "linear":
        x = torch.randn(1, PROBE_FRAMES, layer.codes.shape[1], generator=gen)
    else:
        args = getattr(layer, "conv_args", None) or {}
        stride = args.get("stride", 1)
        stride = stride[0] if isinstance(stride, (tuple, list)) else stride
        groups = args.get("groups", 1)
        channels = layer.codes.shape[1] * groups
        x = torch.randn(1, channels, PROBE_FRAMES * stride + layer.codes.shape[-1], generator=gen)
    return x.to(device)


def time_layer(module: nn.Module, x: torch.Tensor, reps: int = PROBE_REPS) -> float:
    """Median seconds of the module's forward pass on ``x`` after one warm-up."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times = []
    with torch.no_grad():
        module(x)
        sync()
        for _ in range(reps):
            started = time.perf_counter()
            module(x)
            sync()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


class ProbeCache:
    """Timings by machine and layer key, read from and written to one JSON file (atomically);
    ``path=None`` keeps them in memory only."""

    def __init__(self, path: Path | None):
        self.path, self.data, self.dirty = path, {}, False
        try:
            if path is not None and path.is_file():
                self.data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            self.data = {}  # a damaged cache is only a cache: time again

    @classmethod
    def default(cls) -> "ProbeCache":
        return cls(cache_dir() / "deploy-probe.json")

    def get(self, machine: str, key: str) -> float | None:
        return self.data.get(machine, {}).get(key)

    def put(self, machine: str, key: str, seconds: float) -> None:
        self.data.setdefault(machine, {})[key] = seconds
        self.dirty = True

    def save(self) -> None:
        if self.dirty and self.path is not None and os.environ.get("BENCH_PROBE_CACHE", "1") != "0":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(self.data, indent=1))
            self.dirty = False


def choose_measured(layers: dict[str, QuantizedLayer], device: torch.device,
                    candidates: Callable[[QuantizedLayer], list[str]], build: Callable[[str, QuantizedLayer], nn.Module],
                    timer: Timer | None = None, cache: ProbeCache | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """``auto``'s plan: per layer, the fastest of ``candidates(layer)`` (the low-bit backends
    that can run it; ``build(backend, layer)`` makes its module, raising ValueError when the
    kernel fails its own check) and the reference path; a low-bit form only where it is at least
    ``1 - MARGIN`` faster than the reference. Returns the plan and a note per layer that kept
    the reference form. (`upstream_quant.deploy` passes its backends in: this module knows none.)"""
    if cache is None:  # a given timer (tests) neither reads nor writes the machine's timings
        cache = ProbeCache(None) if timer is not None else ProbeCache.default()
    timer = timer or time_layer
    machine = machine_key(device)
    plan, notes = {}, {}
    for name, layer in layers.items():
        timings = {}
        for backend in ("reference", *candidates(layer)):
            key = layer_key(layer, backend)
            seconds = cache.get(machine, key)
            if seconds is None:
                try:
                    module = layer if backend == "reference" else build(backend, layer)
                except ValueError:  # a kernel that fails its own check on this layer (DeployError)
                    continue
                seconds = timer(module.eval(), probe_input(layer, device))
                cache.put(machine, key, seconds)
            timings[backend] = seconds
        reference = timings["reference"]
        fastest = min((b for b in timings if b != "reference"), key=timings.get, default=None)
        if fastest is not None and timings[fastest] <= MARGIN * reference:
            plan[name] = fastest
        else:
            plan[name] = "reference"
            if fastest is not None:
                notes[name] = (f"reference kept: {fastest} took {timings[fastest] / reference:.2f}x the reference's time "
                               f"in the probe ({layer.kind} {tuple(layer.codes.shape)}, {layer.bits}-bit)")
    cache.save()
    return plan, notes

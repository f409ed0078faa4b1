"""Benchmarks whose output goes into issue notes (not timed unit tests)."""
from __future__ import annotations

import resource
import time

import torch


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def perf_quantize(calib_count: int = 32, seconds: float = 4.0) -> int:
    """Round-to-nearest per bit width and GPTQ on random-init HuBERT Base (72 transformer linears)."""
    from upstream_quant import load_upstream
    from upstream_quant.binary import BinaryConfig
    from upstream_quant.gptq import GPTQConfig
    from upstream_quant.quantize import quantize
    from upstream_quant.uniform import UniformConfig

    torch.manual_seed(0)
    up = load_upstream("hubert_base", random_init=True, device="cpu")
    print(f"torch threads: {torch.get_num_threads()}")
    for config in [BinaryConfig(), UniformConfig(bits=2), UniformConfig(bits=4), UniformConfig(bits=8)]:
        started = time.time()
        quantize(up, config, progress=False)
        print(f"RTN {type(config).__name__}(bits={config.bits}): {time.time() - started:.2f} s")
    calib = [0.1 * torch.randn(int(seconds * 16000)) for _ in range(calib_count)]
    for bits in (4, 2):
        started = time.time()
        quantize(up, GPTQConfig(bits=bits), calibration=calib, progress=False)
        print(f"GPTQ(bits={bits}) with {calib_count} x {seconds:g} s calibration utterances: {time.time() - started:.1f} s")
    print(f"peak resident memory: {_peak_rss_gb():.2f} GB")
    return 0

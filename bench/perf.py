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


def perf_upstream(batch: int = 4, seconds: float = 4.0, reps: int = 5) -> int:
    """Our HuBERT Base forward (all hidden states) against s3prl's own expert on the same batch and
    weights (random init, written as an s3prl-converted checkpoint), CPU or GPU."""
    import tempfile
    from pathlib import Path

    from upstream_quant import compat, load_upstream

    compat.ensure_torchaudio()
    from s3prl.upstream.hubert.expert import UpstreamExpert

    torch.manual_seed(0)
    ours = load_upstream("hubert_base", random_init=True)
    device = next(ours.parameters()).device
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "hubert_base_random.pt"
        torch.save(ours.s3prl_state(), ckpt)
        theirs = UpstreamExpert(str(ckpt)).to(device).eval()
    wavs = [0.1 * torch.randn(int(seconds * 16000), device=device) for _ in range(batch)]
    lengths = torch.tensor([w.numel() for w in wavs], device=device)
    padded = torch.stack(wavs)

    def run_ours():
        return ours(padded, lengths)[0]

    def run_theirs():
        return theirs(wavs)["hidden_states"]

    times = {"ours": [], "s3prl": []}
    with torch.no_grad():
        a, b = run_ours(), run_theirs()  # warm-up, and the two must agree
        diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
        for _ in range(reps):
            for name, fn in (("ours", run_ours), ("s3prl", run_theirs)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - started)
    print(f"HuBERT Base (random init), batch {batch} x {seconds:g} s, {reps} reps, device {device}, "
          f"torch threads {torch.get_num_threads()}; max |difference| of hidden states {diff:.2e}")
    best = {k: min(v) for k, v in times.items()}
    for name, t in best.items():
        print(f"  {name:<6} best {t:.3f} s  ({batch / t:.2f} utterances/s)   median {sorted(times[name])[reps // 2]:.3f} s")
    print(f"ours / s3prl throughput: {best['s3prl'] / best['ours']:.3f} (target >= 0.90)")
    return 0


def perf_qat(corpus: str = "data/synth/digits", steps: int = 150, count: int = 64) -> int:
    """Hidden-state cosine to full-precision Whisper tiny.en on held-out audio, at 2 and 1 bits:
    round-to-nearest, GPTQ (2 bits), and QAT trained as the mini suite trains it."""
    import tempfile

    import torch.nn.functional as F

    from downstream import audio
    from downstream.librispeech import load_librispeech
    from upstream_quant import load_upstream
    from upstream_quant.binary import BinaryConfig
    from upstream_quant.gptq import GPTQConfig
    from upstream_quant.qat import QATConfig, train_qat
    from upstream_quant.quantize import quantize
    from upstream_quant.uniform import UniformConfig

    fp = load_upstream("whisper_tiny_en", device="cpu")
    load = lambda split, n: [torch.from_numpy(audio.read(u.path)) for u in load_librispeech(corpus, [split]).sample(n)]  # noqa: E731
    train, test = load("train", 10**9), load("test", count)

    def cosine(model) -> list[float]:
        sims = []
        with torch.no_grad():
            for wav in test:
                a, _ = fp(wav[None], torch.tensor([wav.numel()]))
                b, _ = model(wav[None], torch.tensor([wav.numel()]))
                sims.append([float(F.cosine_similarity(x[0], y[0], dim=-1).mean()) for x, y in zip(a, b)])
        return [sum(col) / len(col) for col in zip(*sims)]

    models = {
        "uniform2 (RTN)": lambda: quantize(fp, UniformConfig(bits=2), progress=False),
        "gptq2": lambda: quantize(fp, GPTQConfig(bits=2), calibration=train[:32], progress=False),
        "binary1 (RTN)": lambda: quantize(fp, BinaryConfig(), progress=False),
    }
    print(f"Whisper tiny.en, mean frame cosine to full precision per hidden state (front end, layers 1-4), "
          f"{len(test)} test utterances of {corpus}")
    for name, make in models.items():
        print(f"  {name:<16} " + "  ".join(f"{c:.3f}" for c in cosine(make())))
    for bits in (2, 1):
        config = QATConfig(method="binary" if bits == 1 else "uniform", bits=bits, steps=steps)
        started = time.time()
        with tempfile.TemporaryDirectory() as work:
            model, summary = train_qat(fp, train, config, work, accelerator="cpu", devices=1, progress=False)
        print(f"  {'qat' + str(bits) + f' ({steps} steps)':<16} " + "  ".join(f"{c:.3f}" for c in cosine(model))
              + f"   (training {time.time() - started:.0f} s, loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f})")
    return 0

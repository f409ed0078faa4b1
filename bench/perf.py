"""Benchmarks whose output goes into issue notes (not timed unit tests)."""
from __future__ import annotations

import resource
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


class _OpCounter(TorchDispatchMode):
    """Counts operator calls that run a kernel (views excluded: they only rewrite metadata). On a
    GPU each costs a launch and PyTorch's dispatch, about 5-20 us whatever its size, which is what
    bounds small sequential work such as GPTQ's column loop (written here: torch's FlopCounterMode
    counts FLOPs, not calls)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += not func.is_view
        return func(*args, **(kwargs or {}))


def count_work(fn) -> tuple[float, int]:
    """(FLOPs, kernel-running operator calls) of ``fn()``: matrix products, convolutions and
    attention counted by torch.utils.flop_counter.FlopCounterMode (element-wise work is not
    FLOPs there; on a GPU it is memory-bound and small beside the calls' overhead)."""
    from torch.utils.flop_counter import FlopCounterMode

    flops, calls = FlopCounterMode(display=False), _OpCounter()
    with flops, calls:
        fn()
    return float(flops.get_total_flops()), calls.calls


# The GPU assumptions of every projection here: sustained bf16/fp32 matrix throughput (TFLOP/s) and
# the cost of one operator call (launch and dispatch, seconds), from optimistic to pessimistic
GPU_RATES = ((100, 5e-6), (50, 10e-6), (25, 20e-6))


def gpu_seconds(flops: float, calls: int, tflops: float, call_s: float) -> float:
    """Projected GPU time of work counted by count_work: its FLOPs at a sustained throughput plus
    each operator call's fixed cost, as if nothing overlapped (an upper bound for one stream)."""
    return flops / (tflops * 1e12) + calls * call_s


def _synced(device: torch.device) -> float:
    """The time once queued GPU work is done (what a wall-clock timing of CUDA work needs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def perf_quantize(calib_count: int = 32, seconds: float = 4.0, device: str | None = None) -> int:
    """Round-to-nearest per bit width and GPTQ (sequential, as published, and block
    reconstruction) on random-init HuBERT Base (72 transformer linears): timed on ``device``
    (default: auto), then counted (FLOPs and operator calls, count_work) and projected to a GPU
    (GPU_RATES); on a GPU the measured times stand beside the projection that checks it."""
    from upstream_quant import load_upstream
    from upstream_quant.methods.binary import BinaryConfig
    from upstream_quant.methods.gptq import GPTQConfig
    from upstream_quant.quantize import quantize, target_layers
    from upstream_quant.methods.recon import ReconConfig
    from upstream_quant.methods.uniform import UniformConfig
    from upstream_quant.sequential import find_blocks
    from upstream_quant.upstream import pick_device

    torch.manual_seed(0)
    dev = pick_device(device)
    up = load_upstream("hubert_base", random_init=True, device=dev)
    here = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"device: {here}")
    for config in [BinaryConfig(), UniformConfig(bits=2), UniformConfig(bits=4), UniformConfig(bits=8)]:
        started = _synced(dev)
        quantize(up, config, progress=False)
        print(f"RTN {type(config).__name__}(bits={config.bits}): {_synced(dev) - started:.2f} s")
    calib = [0.1 * torch.randn(int(seconds * 16000)) for _ in range(calib_count)]
    what = f"{calib_count} x {seconds:g} s calibration utterances"
    steps = 25
    phases = [("GPTQ sequential, act-order, Hessian search", GPTQConfig(bits=3)),
              ("GPTQ as published (one pass)", GPTQConfig(bits=3, sequential=False, act_order=False, scale_search="minmax")),
              ("recon's start alone (its GPTQ, 0 steps per block)", ReconConfig(bits=2, group_size=64, steps=0)),
              (f"recon (GPTQ then {steps} steps per block)", ReconConfig(bits=2, group_size=64, steps=steps))]
    measured = {}
    for label, config in phases:
        started = _synced(dev)
        quantize(up, config, calibration=calib, progress=False)
        measured[label] = _synced(dev) - started
        print(f"{label}, {config.bits} bits, {what}: {measured[label]:.1f} s")
    print(f"peak resident memory: {_peak_rss_gb():.2f} GB"
          + (f"; peak GPU memory {torch.cuda.max_memory_allocated(dev) / 1e9:.2f} GB" if dev.type == "cuda" else ""))

    # Counted in separate runs (the counters' Python hooks would distort the timings above). A
    # reconstruction step is the difference of 2 steps a block and none, so the default 300 steps
    # a block are projected from one counted step; its time is the difference of the timed 25
    # steps a block and none (recon's own 2-bit g64 GPTQ start, not the 3-bit per-row GPTQ above).
    run = lambda config: count_work(lambda: quantize(up, config, calibration=calib, progress=False))  # noqa: E731
    counted = {label: run(config) for label, config in phases[:2]}
    (f0, c0), (f2, c2) = run(phases[2][1]), run(ReconConfig(bits=2, group_size=64, steps=2))
    blocks = len(find_blocks(up, list(target_layers(up, phases[3][1].targets)))[1])  # reconstructed one at a time
    step = ((f2 - f0) / (2 * blocks), (c2 - c0) / (2 * blocks))
    default = ReconConfig().steps
    start_s = measured[phases[2][0]]
    step_s = (measured[phases[3][0]] - start_s) / (steps * blocks)
    rows = [(label, *counted[label], measured[label]) for label, _ in phases[:2]]
    rows.append((f"recon, 2 bits g64, {default} steps per block (the default; its time from {steps})", f0 + default * blocks * step[0],
                 int(c0 + default * blocks * step[1]), start_s + default * blocks * step_s))
    print(f"\nprojected to a GPU (HuBERT Base, {what}): FLOPs (torch's FlopCounterMode) at a sustained throughput, "
          "plus a fixed cost per operator call, nothing overlapped")
    print(f"a reconstruction step (4 utterances, one block forward and backward): {step[0] / 1e9:.1f} GFLOP, "
          f"{step[1]:.0f} operator calls; here {step_s:.2f} s")
    print(f"| phase | GFLOP | operator calls | measured ({dev.type}) | " +
          " | ".join(f"GPU at {t} TFLOP/s, {c * 1e6:g} us a call" for t, c in GPU_RATES) + " |")
    print("|---|---|---|---|" + "---|" * len(GPU_RATES))
    for label, flops, calls, cpu in rows:
        gpu = " | ".join(f"{gpu_seconds(flops, calls, t, c):.1f} s" for t, c in GPU_RATES)
        print(f"| {label} | {flops / 1e9:.0f} | {calls:,} | {cpu:.0f} s | {gpu} |")
    return 0


def perf_clip(calib_dir: str, count: int = 32, bits: tuple[int, ...] = (4, 3)) -> int:
    """Why clip='mse' can hurt: per layer of Whisper tiny.en, the output error ||X (W - Q)^T||^2
    (X: the layer's inputs on calibration audio) of the min-max, weight-MSE and output-weighted
    ranges, and the whole encoder's output error on other utterances of the same folder."""
    from upstream_quant import load_upstream
    from upstream_quant.calibration import collect_stats, load_calibration_dir
    from upstream_quant.quantize import quantize, target_layers
    from upstream_quant.methods.uniform import UniformConfig, quantize_uniform

    torch.manual_seed(0)
    up = load_upstream("whisper_tiny_en", device="cpu").eval()
    wavs = load_calibration_dir(calib_dir, 2 * count)
    calib, held = wavs[:count], wavs[count:]
    layers = {n: m for n, m in target_layers(up, ("transformer",)).items() if isinstance(m, torch.nn.Linear)}
    stats = collect_stats(up, layers, calib, need_hessian=True, need_sample=False)
    with torch.no_grad():
        ref = [up(w[None], torch.tensor([w.numel()]))[0][-1] for w in held]
    print(f"Whisper tiny.en, {len(layers)} transformer linears, {len(calib)} calibration / {len(held)} held-out utterances of {calib_dir}")
    for b in bits:
        errs = {}
        for clip in ("minmax", "mse", "output"):
            config = UniformConfig(bits=b, clip=clip)
            per = {}
            for name, layer in layers.items():
                d = layer.weight.detach() - quantize_uniform(layer.weight, config, stats[name]).dequantize()
                h = stats[name].hessian
                per[name] = float(torch.einsum("ij,jk,ik->", d, h, d) / torch.einsum("ij,jk,ik->", layer.weight.detach(), h, layer.weight.detach()))
            q = quantize(up, config, calibration=calib if config.needs_calibration else None, progress=False)
            with torch.no_grad():
                out = [q(w[None], torch.tensor([w.numel()]))[0][-1] for w in held]
            total = sum(float(((o - r) ** 2).sum()) for o, r in zip(out, ref)) / sum(float((r**2).sum()) for r in ref)
            errs[clip] = (per, total)
        worse = [n for n in layers if errs["mse"][0][n] > errs["minmax"][0][n]]
        print(f"{b} bits: encoder output relative error (held out): " +
              ", ".join(f"{c} {errs[c][1]:.4f}" for c in errs))
        print(f"  layers where mse's output error exceeds min-max's: {len(worse)} of {len(layers)}"
              + (f" (worst: {max(worse, key=lambda n: errs['mse'][0][n] / errs['minmax'][0][n])}, "
                 f"{max(errs['mse'][0][n] / errs['minmax'][0][n] for n in worse):.2f}x)" if worse else ""))
        print(f"  layers where output's exceeds min-max's: {sum(errs['output'][0][n] > errs['minmax'][0][n] for n in layers)}")
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
                started = _synced(device)
                fn()
                times[name].append(_synced(device) - started)
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

    from downstream.librispeech import load_librispeech
    from upstream_quant import load_upstream
    from upstream_quant.methods.binary import BinaryConfig
    from upstream_quant.methods.gptq import GPTQConfig
    from upstream_quant.methods.qat import QATConfig, train_qat
    from upstream_quant.quantize import quantize
    from upstream_quant.methods.uniform import UniformConfig

    fp = load_upstream("whisper_tiny_en", device="cpu")
    load = lambda split, n: load_librispeech(corpus, [split]).waveforms(n)  # noqa: E731
    train_files = [u.path for u in load_librispeech(corpus, ["train"]).utterances]  # QAT streams them from disk
    calib, test = load("train", 32), load("test", count)

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
        "gptq2": lambda: quantize(fp, GPTQConfig(bits=2), calibration=calib, progress=False),
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
            model, summary = train_qat(fp, train_files, config, work, accelerator="cpu", devices=1, progress=False)
        print(f"  {'qat' + str(bits) + f' ({steps} steps)':<16} " + "  ".join(f"{c:.3f}" for c in cosine(model))
              + f"   (training {time.time() - started:.0f} s, loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f})")
    return 0


_STREAM_CHILD = """
import json, resource, sys, tempfile
from upstream_quant import load_upstream
from upstream_quant.calibration import audio_files
from upstream_quant.methods.qat import QATConfig, train_qat
files = audio_files(sys.argv[1])
up = load_upstream("distil_whisper_tiny_en", device="cpu")
with tempfile.TemporaryDirectory() as work:
    train_qat(up, files, QATConfig(method="uniform", bits=2, steps=int(sys.argv[2]), batch_size=4, crop_seconds=4.0),
              work, accelerator="cpu", devices=1, progress=False, num_workers=1)
print(json.dumps({"files": len(files), "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
                  "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e3}))
"""


def write_tone_corpus(folder, hours: float, seconds: float = 10.0, seed: int = 0) -> int:
    """Files of `seconds` of quiet tones (FLAC compresses them well) adding up to `hours`."""
    import numpy as np
    import soundfile as sf
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    n = int(round(hours * 3600 / seconds))
    for i in range(n):
        path = folder / f"{i:06d}.flac"
        if not path.is_file():
            sf.write(path, (0.1 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)).astype(np.float32), 16000)
    return n


def perf_stream(hours: tuple[float, ...] = (1.0, 10.0), steps: int = 30) -> int:
    """Peak resident memory of QAT (distil_whisper_tiny_en, 2 bits, streamed audio, one loader
    worker) over synthetic corpora of each size: it should not grow with the corpus."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for h in hours:
            started = time.time()
            n = write_tone_corpus(Path(tmp) / f"{h:g}h", h)
            made = time.time() - started
            started = time.time()
            out = subprocess.run([sys.executable, "-c", _STREAM_CHILD, str(Path(tmp) / f"{h:g}h"), str(steps)],
                                 capture_output=True, text=True, check=True)
            results[h] = json.loads(out.stdout.strip().splitlines()[-1])
            in_ram = h * 3600 * 16000 * 4 / 1e9
            print(f"{h:g} h ({n} files of 10 s, written in {made:.0f} s): QAT {steps} steps in {time.time() - started:.0f} s, "
                  f"peak RSS main {results[h]['self_mb']:.0f} MB, loader worker {results[h]['workers_mb']:.0f} MB "
                  f"(the whole corpus as float32 would be {in_ram:.2f} GB)")
        small, large = results[min(hours)], results[max(hours)]
        print(f"peak RSS ratio {max(hours):g} h / {min(hours):g} h: main {large['self_mb'] / small['self_mb']:.3f}, "
              f"worker {large['workers_mb'] / small['workers_mb']:.3f} (target <= 1.2)")
    return 0


def superb_asr_step_flops(upstream: str = "hubert_base", batch: int = 16, seconds: float = 12.7) -> dict[str, float]:
    """FLOPs of one SUPERB ASR training step: the frozen upstream's forward (2 x its MACs, from the
    accounting's hooks) and the head's forward and backward (3 x forward: Linear(D->1024), 2 BiLSTM
    layers of 1024, the CTC layer). ``seconds``: mean utterance length (train-clean-100: 12.7 s)."""
    from upstream_quant.accounting import inventories

    _, ops, _ = inventories(upstream, seconds)
    up = 2 * batch * sum(op.macs for op in ops)
    frames = batch * seconds * 50
    proj, hidden, dim = 1024, 1024, 768
    lstm = sum(2 * 4 * ((proj if layer == 0 else 2 * hidden) + hidden) * hidden for layer in range(2))  # both directions
    head = 3 * 2 * frames * (dim * proj + lstm + 2 * hidden * 29)
    return {"upstream": up, "head": head, "total": up + head}


def perf_step(batch: int = 2, seconds: float = 4.0, reps: int = 2) -> int:
    """A SUPERB-size ASR step (HuBERT Base forward, full SUPERB head forward and backward) timed on
    this machine at a small batch, its FLOP rate, and what 200k steps of SUPERB's batch would take
    at stated sustained GPU throughputs."""
    from downstream.heads import ASRHead
    from downstream import text
    from upstream_quant import load_upstream

    torch.manual_seed(0)
    up = load_upstream("hubert_base", random_init=True, device="cpu")
    head = ASRHead(768, len(text.VOCAB))
    opt = torch.optim.Adam(head.parameters(), lr=1e-4)
    wavs = 0.1 * torch.randn(batch, int(seconds * 16000))
    lengths = torch.full((batch,), wavs.shape[1])
    times = {"upstream": [], "head": []}
    for _ in range(reps + 1):  # the first is warm-up
        started = time.perf_counter()
        with torch.no_grad():
            states, lens = up(wavs, lengths)
        mid = time.perf_counter()
        x = states[-1]
        loss = head(x, lens[-1]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        end = time.perf_counter()
        times["upstream"].append(mid - started)
        times["head"].append(end - mid)
    measured = {k: min(v[1:]) for k, v in times.items()}
    small = superb_asr_step_flops(batch=batch, seconds=seconds)
    print(f"this machine ({torch.get_num_threads()} threads): HuBERT Base forward {measured['upstream']:.2f} s "
          f"({small['upstream'] / measured['upstream'] / 1e9:.0f} GFLOP/s), SUPERB head forward+backward "
          f"{measured['head']:.2f} s ({small['head'] / measured['head'] / 1e9:.0f} GFLOP/s), batch {batch} x {seconds:g} s")
    step = superb_asr_step_flops()
    print(f"SUPERB step (batch 16 x 12.7 s): {step['upstream'] / 1e12:.2f} TFLOP upstream + {step['head'] / 1e12:.2f} TFLOP head")
    cpu_step = step["upstream"] / (small["upstream"] / measured["upstream"]) + step["head"] / (small["head"] / measured["head"])
    print(f"  on this machine: {cpu_step:.0f} s per step, {cpu_step * 200_000 / 86400:.0f} days for 200k steps")
    # QAT (paper suite: 20k steps, batch 8 x 4 s crops): teacher forward + student forward and backward
    qat = 4 * superb_asr_step_flops(batch=8, seconds=4.0)["upstream"]
    for tflops in (25, 50, 100):
        hours = step["total"] / (tflops * 1e12) * 200_000 / 3600
        print(f"  at a sustained {tflops} TFLOP/s (bf16): {step['total'] / (tflops * 1e12) * 1000:.0f} ms per step, "
              f"{hours:.1f} h for 200k steps; a QAT step {qat / (tflops * 1e12) * 1000:.0f} ms, "
              f"{qat / (tflops * 1e12) * 20_000 / 3600:.1f} h for 20k steps")
    return 0


def perf_whisper(corpus: str = "data/synth/digits", split: str = "test", count: int = 2, reps: int = 3) -> int:
    """Whisper tiny.en at the utterance's own length against Whisper's 30 s padding (docs/upstreams.md's
    cosines and timings): mean frame cosine per hidden state over the valid frames, and the
    forward time of the batch both ways."""
    from pathlib import Path

    import numpy as np

    from downstream import audio
    from downstream.librispeech import load_librispeech
    from upstream_quant import load_upstream
    from upstream_quant.upstreams.whisper import build_whisper

    if not (Path(corpus) / split).is_dir():
        raise FileNotFoundError(f"{corpus}/{split} not found: build it with `bench data synth --out {Path(corpus).parent} "
                                f"--kind {Path(corpus).name}` (make bench does), or pass --corpus ROOT of a LibriSpeech-layout corpus")
    utts = sorted(load_librispeech(corpus, [split]).utterances, key=lambda u: u.path)[:count]
    wavs = [torch.from_numpy(audio.read(u.path)) for u in utts]
    lens = torch.tensor([w.numel() for w in wavs])
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    own = load_upstream("whisper_tiny_en", device="cpu")
    padded = build_whisper({**own.architecture()["config"], "pad_to_30s": True}).eval()
    padded.load_state_dict(own.state_dict())

    def timed(model) -> tuple[list, list, float]:
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            with torch.no_grad():
                states, lengths = model(batch, lens)
            times.append(time.perf_counter() - started)
        return states, lengths, float(np.median(times))

    a, a_len, t_own = timed(own)
    b, _, t_pad = timed(padded)
    print(f"{len(utts)} utterances of {corpus}/{split} ({', '.join(f'{n / 16000:.2f} s' for n in lens.tolist())}), "
          f"torch threads {torch.get_num_threads()}")
    print("mean frame cosine, own length vs padded to 30 s (valid frames):")
    for i, (x, y) in enumerate(zip(a, b)):
        cos = [float(torch.nn.functional.cosine_similarity(x[j, :n], y[j, :n], dim=-1).mean())
               for j, n in enumerate(a_len[i].tolist())]
        print(f"  hidden state {i} ({'front end' if i == 0 else f'layer {i}'}): {np.mean(cos):.4f}")
    print(f"forward (median of {reps}): own length {t_own:.3f} s, padded {t_pad:.3f} s ({t_pad / t_own:.1f}x)")
    return 0


def measure_latency(model, wavs: torch.Tensor, lens: torch.Tensor, reps: int) -> float:
    """Median seconds of `reps` forward passes after one warm-up (timed with CUDA events on CUDA)."""
    import statistics

    times = []
    with torch.no_grad():
        for i in range(reps + 1):
            if wavs.is_cuda:  # CUDA events: the GPU's own clock around the forward pass
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(wavs, lens)
                end.record()
                end.synchronize()
                elapsed = start.elapsed_time(end) / 1000
            else:
                started = time.perf_counter()
                model(wavs, lens)
                elapsed = time.perf_counter() - started
            if i:
                times.append(elapsed)
    return statistics.median(times)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# What a user would run instead of our forms, timed beside them: the fp32 model exported to ONNX and
# run by ONNX Runtime, and ORT's own int8 (`quantize_dynamic` of that export, on MatMul/Gemm only
# or on every op it quantizes, Conv included)
ORT_PEERS = {"ort-fp32": 16, "ort-int8-matmul": 8, "ort-int8-all": 8}


def ort_peer(base, backend: str, device: torch.device):
    """One of `ORT_PEERS` for the fp32 upstream `base`, as an `OrtUpstream`."""
    import tempfile
    from pathlib import Path

    from upstream_quant.onnx_export import export_onnx
    from upstream_quant.ort_backend import OrtUpstream

    with tempfile.TemporaryDirectory(prefix="lowbit-peer-") as folder:  # the session holds the graph in memory
        path = Path(folder) / "fp32.onnx"
        report = export_onnx(base, path, store_half=False)
        if backend != "ort-fp32":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = Path(folder) / "int8.onnx"
            quantize_dynamic(path, quantized, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"] if backend == "ort-int8-matmul" else None)
            path = quantized
        return OrtUpstream(path, base, report, device)


def deploy_probe(upstream: str, bits: int, backend: str, group_size: int | None, seconds: float, reps: int, batch: int,
                 device: str | None, layers: str = "transformer") -> dict:
    """One measurement of `perf_deploy`, meant to run in a process of its own: build the model
    (fp32 when `bits` is 16; else quantized, 1 bit binary, and deployed on `backend`; the
    transformer's linears, or with `layers` ``all`` every linear and convolution, or with
    ``cnn8`` the transformer at `bits` and the other feature layers at 8), drop everything else,
    reset the peak-RSS counter, then time `reps` forward passes after a warm-up. The ``linears``
    columns count the transformer's linears whatever `layers` is; the estimate is the model's own
    (`model_cost`). A backend of `ORT_PEERS` is the fp32 model on ONNX Runtime."""
    import gc

    from upstream_quant import load_upstream
    from upstream_quant.methods.binary import BinaryConfig
    from upstream_quant.accounting import group_of, model_cost
    from upstream_quant.select import FEATURE_GROUPS
    from upstream_quant.deploy import deploy, resident_weight_bytes
    from upstream_quant.quantize import quantize, target_layers
    from upstream_quant.methods.uniform import UniformConfig
    from upstream_quant.upstream import pick_device

    torch.manual_seed(0)
    dev = pick_device(device)
    base = load_upstream(upstream, random_init=upstream not in ("whisper_tiny_en", "distil_whisper_tiny_en", "fbank"), device="cpu")
    linears = target_layers(base, ("transformer",))
    n_weights = sum(m.weight.numel() for m in linears.values())
    groups = (n_weights // group_size) if group_size else sum(m.weight.shape[0] for m in linears.values())
    fp_bytes = sum(t.numel() * 4 for m in linears.values() for t in m.parameters(recurse=False))
    del linears  # it holds the fp32 layers
    if backend in ORT_PEERS:
        model, linear_bytes = ort_peer(base, backend, dev), None
        est = model_cost(base, seconds).est_runtime
        del base
    elif bits == 16:
        model, linear_bytes = base.to(dev), fp_bytes
        est = model_cost(base, seconds).est_runtime
    else:
        targets = FEATURE_GROUPS if layers == "all" else ("transformer",)
        config = (BinaryConfig(group_size=group_size, targets=targets) if bits == 1
                  else UniformConfig(bits=bits, group_size=group_size, targets=targets))
        quantized = quantize(base, config, progress=False)
        if layers == "cnn8":
            rest = tuple(g for g in FEATURE_GROUPS if g != "transformer")
            quantized = quantize(quantized, UniformConfig(bits=8, targets=rest), progress=False)
        est = model_cost(quantized, seconds).est_runtime
        model = deploy(quantized, backend, device=dev)
        layer_bytes = (model.layer_bytes if hasattr(model, "layer_bytes")  # an exported model: bytes in its graph
                       else lambda name: resident_weight_bytes(model.get_submodule(name)))
        linear_bytes = sum(layer_bytes(name) for name in model.deploy_backends
                           if group_of(name, model.group_prefixes) == "transformer")
        del quantized, base
    gc.collect()
    try:  # hand freed heap back to the system, so the resident set is what the model holds
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as fh:  # resets the peak resident set (VmHWM) on Linux
        fh.write("5")
    rss_kb = _status_kb("VmRSS")
    wavs = 0.1 * torch.randn(batch, int(seconds * 16000), device=dev)
    lens = torch.full((batch,), wavs.shape[1], device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    latency = measure_latency(model, wavs, lens, reps)
    gpu = {"cuda_allocated_mb": torch.cuda.memory_allocated(dev) / 1e6,
           "cuda_peak_mb": torch.cuda.max_memory_allocated(dev) / 1e6} if dev.type == "cuda" else {}
    ideal = n_weights * bits / 8 + groups * 2 if bits != 16 and backend not in ORT_PEERS else None  # codes, an fp16 scale per row or group
    return {"upstream": upstream, "bits": bits, "backend": backend if bits != 16 or backend in ORT_PEERS else "fp32",
            "group_size": group_size, "layers": layers if bits != 16 and backend not in ORT_PEERS else None,
            "latency_s": latency, "rss_mb": rss_kb / 1e3, "peak_rss_mb": _status_kb("VmHWM") / 1e3,
            "linear_weights_mb": None if linear_bytes is None else linear_bytes / 1e6, "ideal_mb": None if ideal is None else ideal / 1e6,
            "all_weights_mb": resident_weight_bytes(model, quantized_only=False) / 1e6,
            "threads": torch.get_num_threads(), "device": str(dev), "est_runtime": est, **gpu}


def perf_deploy(upstream: str, configs: list[tuple[int, str, int | None, str]], seconds: float, reps: int, batch: int,
                device: str | None = None, out: str | None = None, rounds: int = 1, peers: bool = True,
                alongside: tuple[str, ...] = ()) -> int:
    """Measured latency, throughput and memory of deployed low-bit models beside fp32 and the
    estimate. Each configuration runs in a fresh process (freed heap handed back with malloc_trim
    after building), so resident and peak memory are its own. With ``rounds`` > 1 every
    configuration, fp32 included, is measured once per round, and each ratio to fp32 is taken
    within its round: the median is reported with its range (a shared machine drifts). Every row
    also has its latency over HuBERT Base's fp32 (``measured_vs_reference``, the paper's unit for
    runtimes), which is timed in each round too when `upstream` is another model.

    ``peers`` (when onnxruntime is installed and the device is the CPU): the same rounds time
    `ORT_PEERS`, what a user would run instead, and every row gets its latency over the fastest
    fp32 of its round (``measured_vs_best_fp32``: PyTorch's or ONNX Runtime's, whichever won).
    ``alongside``: other upstreams' fp32, on PyTorch and (with peers) ONNX Runtime, timed in the
    same rounds (the paper's headline sets DistilHuBERT's fp32 beside a 1-bit HuBERT)."""
    import importlib.util
    import json
    import os
    import statistics
    import subprocess
    import sys

    from upstream_quant.accounting import REFERENCE_UPSTREAM
    from upstream_quant.upstream import pick_device

    peers = peers and importlib.util.find_spec("onnxruntime") is not None and pick_device(device).type == "cpu"
    fp = (upstream, 16, "fp32", None, None)
    ort_fp = (upstream, 16, "ort-fp32", None, None) if peers else None
    peer_keys = [(upstream, ORT_PEERS[b], b, None, None) for b in ORT_PEERS] if peers else []
    others = [(name, 16, b, None, None) for name in alongside for b in ("fp32", *(["ort-fp32"] if peers else []))]
    # another upstream is also timed against HuBERT Base's fp32 (on its fastest runtime), as the
    # paper's runtimes are
    references = ([(REFERENCE_UPSTREAM, 16, b, None, None) for b in ("fp32", *(["ort-fp32"] if peers else []))]
                  if upstream != REFERENCE_UPSTREAM else [])
    reference = references[0] if references else None
    plan = [fp, *peer_keys, *[(upstream, *c) for c in configs], *others,
            *[r for r in references if r not in others]]
    measured: dict[tuple, list[dict]] = {key: [] for key in plan}
    for round_ in range(rounds):
        for key in plan:
            name, bits, backend, group, layers = key
            code = (f"import json; from bench.perf import deploy_probe; print('RESULT', json.dumps(deploy_probe("
                    f"{name!r}, {bits}, {backend!r}, {group!r}, {seconds}, {reps}, {batch}, {device!r}, {layers!r})))")
            env = os.environ | {"PYTHONWARNINGS": "ignore"}
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"{name} {bits}-bit {backend}: failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
                continue
            measured[key].append(json.loads(line[7:]) | {"round": round_})
            print(f"  measured {name} {bits}-bit {backend} (round {round_ + 1}/{rounds})", file=sys.stderr)

    def latency(key) -> dict[int, float]:
        return {r["round"]: r["latency_s"] for r in measured.get(key, [])}

    def ratios(base: dict[int, float], runs) -> list[float]:
        return [r["latency_s"] / base[r["round"]] for r in runs if r["round"] in base]

    if not measured[fp] or (reference and not measured[reference]):
        return 1

    def fastest(keys) -> dict[int, float]:
        """Per round, the fastest fp32 of `keys` (PyTorch's, and ONNX Runtime's when timed)."""
        return {i: min(t for t in (latency(k).get(i) for k in keys if k) if t is not None) for i in latency(keys[0])}

    best = fastest([fp, ort_fp])
    ref_best = fastest(references) if references else best
    rows = []
    for key, runs in measured.items():
        if (key in references and key not in others) or not runs:
            continue
        to_fp = ratios(latency(fp), runs)
        row = dict(runs[0]) | {"latency_s": statistics.median(r["latency_s"] for r in runs),
                               "measured_runtime": round(statistics.median(to_fp), 4),
                               "measured_range": [round(min(to_fp), 4), round(max(to_fp), 4)]}
        vs_ref = ratios(ref_best, runs)
        row["measured_vs_reference"] = round(statistics.median(vs_ref), 4)
        row["vs_reference_range"] = [round(min(vs_ref), 4), round(max(vs_ref), 4)]
        vs_best = ratios(best, runs)
        row["measured_vs_best_fp32"] = round(statistics.median(vs_best), 4)
        row["vs_best_fp32_range"] = [round(min(vs_best), 4), round(max(vs_best), 4)]
        rows.append(row)
    first = rows[0]
    winner = "ONNX Runtime" if ort_fp and latency(ort_fp) and statistics.median(latency(ort_fp).values()) < statistics.median(latency(fp).values()) else "PyTorch"
    print(f"{upstream}: {batch} x {seconds:g} s utterance(s), median of {reps} forward passes after a warm-up, "
          f"{rounds} round(s), {first['threads']} threads, {first['device']}; each measurement in its own process")
    print(f"{'model':<22} {'bits':>4} {'backend':<16} {'layers':<11} {'latency s':>9} {'vs fp32':>7} {'vs best':>7} {'range':>11} "
          f"{'vs HuBERT':>9} {'est':>6} {'RSS MB':>7} {'peak MB':>8} {'linears MB':>10} {'ideal MB':>8} {'all MB':>7}")
    for r in rows:
        est = r["est_runtime"]
        ideal = f"{r['ideal_mb']:8.2f}" if r["ideal_mb"] is not None else f"{'':>8}"
        linears = f"{r['linear_weights_mb']:10.2f}" if r["linear_weights_mb"] is not None else f"{'':>10}"
        lo, hi = r["vs_best_fp32_range"]
        print(f"{r['upstream']:<22} {r['bits']:>4} {r['backend']:<16} {r.get('layers') or '':<11} {r['latency_s']:9.3f} "
              f"{r['measured_runtime']:7.2f} {r['measured_vs_best_fp32']:7.2f} {f'{lo:.2f}-{hi:.2f}':>11} "
              f"{r['measured_vs_reference']:9.2f} {est['encoder']:6.3f} {r['rss_mb']:7.0f} {r['peak_rss_mb']:8.0f} "
              f"{linears} {ideal} {r['all_weights_mb']:7.1f}")
    for r in rows:
        if "cuda_peak_mb" in r:
            print(f"  {r['bits']}-bit {r['backend']} {r.get('layers') or ''}: CUDA memory allocated {r['cuda_allocated_mb']:.0f} MB, "
                  f"peak during the forward passes {r['cuda_peak_mb']:.0f} MB")
    print(f"vs fp32: median over rounds of the latency over the same round's PyTorch fp32 latency of {upstream}; vs best: the "
          f"same over the round's fastest fp32 ({winner} here{'' if peers else '; no ONNX Runtime peers'}), with its range "
          "(min-max); vs HuBERT: over HuBERT Base's fastest fp32 latency of the round (the paper's unit, on its best runtime); est: the bit-operation estimate "
          "of the transformer encoder, relative to fp HuBERT Base; layers: transformer = its linears quantized, all = every "
          "linear and convolution; ort-*: the fp32 model exported to ONNX (bench export) on ONNX Runtime, as is or after "
          "ORT's quantize_dynamic int8 (MatMul/Gemm only, or every op it quantizes); onnxruntime(-int8): our export of the "
          "quantized model (MatMulNBits; -int8: 8-bit inputs); linears MB: resident bytes of the quantized transformer "
          "linears (in the graph for exports); ideal MB: bits x weights / 8 plus one fp16 scale per row or group; all MB: "
          "every parameter and buffer (the graph file for exports); RSS and peak: the process after loading (Python and "
          "PyTorch included), from the first round")
    if out:
        import platform

        from upstream_quant.io import write_atomic

        record = {"upstream": upstream, "seconds": seconds, "batch": batch, "reps": reps, "rounds": rounds, "weights": "random",
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}",
                  "reference": REFERENCE_UPSTREAM,
                  "reference_latency_s": statistics.median(r["latency_s"] for r in measured[reference or fp]),
                  "fastest_fp32": winner, "reference_unit": "the fastest fp32 of the round" if peers else "PyTorch fp32",
                  "rows": rows}
        print(f"wrote {write_atomic(out, json.dumps(record, indent=1))}")
    return 0

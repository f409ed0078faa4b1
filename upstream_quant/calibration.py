"""Label-free calibration statistics: each target layer's inputs on a few unlabelled utterances."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


class CalibrationError(ValueError):
    """Calibration audio is missing, empty or too short."""


@dataclass
class LayerStats:
    """What a method may need from a layer's inputs: X^T X (GPTQ) and a row sample (cosine search)."""

    hessian: torch.Tensor | None = None  # (in, in), sum of x x^T over all input rows
    rows: int = 0
    max_rows: int = 4096
    _parts: list = field(default_factory=list, repr=False)
    _kept: int = 0  # rows held in _parts

    def add(self, x: torch.Tensor, need_hessian: bool, need_sample: bool) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if need_hessian:
            h = x.T @ x
            self.hessian = h if self.hessian is None else self.hessian + h
        if need_sample and self._kept < self.max_rows:
            part = x[: self.max_rows - self._kept].cpu()
            self._parts.append(part)
            self._kept += part.shape[0]
        self.rows += x.shape[0]

    @property
    def sample(self) -> torch.Tensor | None:
        """Up to `max_rows` input rows, in the order they were seen (None if none were kept)."""
        return torch.cat(self._parts) if self._parts else None

    _grad_parts: list = field(default_factory=list, repr=False)

    @property
    def grad_sample(self) -> torch.Tensor | None:
        """Per output element of the `sample` rows, g^2: an estimate of the diagonal of the
        Gauss-Newton Hessian of the model's final output with respect to this layer's output
        (see collect_stats(need_grads=True)); None unless collected."""
        return torch.cat(self._grad_parts) if self._grad_parts else None


MIN_SAMPLES = 400  # 25 ms at 16 kHz: the shortest input the HuBERT CNN turns into a frame
SHORT_SAMPLES = 8000  # 0.5 s: below this a calibration utterance gives a handful of frames (warned)


def check_calibration(wavs: list[torch.Tensor]) -> None:
    if not wavs:
        raise CalibrationError("calibration set is empty: give at least one unlabelled utterance")
    for i, wav in enumerate(wavs):
        if wav.dim() != 1 or wav.numel() < MIN_SAMPLES:
            raise CalibrationError(
                f"calibration utterance {i} is too short or not mono ({tuple(wav.shape)}); "
                f"need a 1-D waveform of at least {MIN_SAMPLES} samples (25 ms at 16 kHz)"
            )
        if not torch.isfinite(wav).all():
            raise CalibrationError(f"calibration utterance {i} has NaN or infinite samples")
    short = sum(1 for w in wavs if w.numel() < SHORT_SAMPLES)
    if short:
        warnings.warn(f"{short} of {len(wavs)} calibration utterance(s) are shorter than {SHORT_SAMPLES / 16000:g} s; "
                      "statistics from a few frames are unreliable")


def pad_to_window(wavs: list[torch.Tensor], window: int | None) -> list[torch.Tensor]:
    """Each waveform followed by silence up to ``window`` samples (None: unchanged).

    A model must be calibrated on the inputs it is deployed on: Whisper's decoder reads 30 s
    windows, mostly silence after a few seconds of speech, and the encoder's activations over
    that silence are unlike those over speech. Calibrated on unpadded utterances, GPTQ at 3 bits
    (groups of 64, asymmetric) gave 30.8 % WER end to end on mini's held-out voice; on the same
    utterances padded to 30 s, 12.1 % (full precision: 7.1 %)."""
    if window is None:
        return list(wavs)
    long = [i for i, w in enumerate(wavs) if w.shape[-1] > window]
    if long:
        raise CalibrationError(f"calibration utterance(s) {long[:5]} are longer than the model's input window of "
                               f"{window} samples ({window / 16000:g} s at 16 kHz); cut them or leave them out")
    return [torch.nn.functional.pad(w, (0, window - w.shape[-1])) for w in wavs]


def is_waveforms(calibration) -> bool:
    """Our upstreams' convenience: a list of 1-D waveforms (every other input is a model batch)."""
    return isinstance(calibration, (list, tuple)) and bool(calibration) and all(
        isinstance(w, torch.Tensor) and w.dim() == 1 for w in calibration)


def _tensors(batch):
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, (tuple, list)):
        for item in batch:
            yield from _tensors(item)
    elif isinstance(batch, dict):
        for item in batch.values():
            yield from _tensors(item)


def _shapes(batch) -> str:
    if isinstance(batch, torch.Tensor):
        return f"tensor{tuple(batch.shape)}"
    if isinstance(batch, dict):
        return "{" + ", ".join(f"{k}: {_shapes(v)}" for k, v in batch.items()) + "}"
    if isinstance(batch, (tuple, list)):
        return "(" + ", ".join(_shapes(v) for v in batch) + ")"
    return type(batch).__name__


def map_tensors(fn, batch):
    """`batch` with `fn` applied to every tensor in it (nested tuples, lists and dicts)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: map_tensors(fn, v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(fn, v) for v in batch)
    return batch


@contextmanager
def removing(handles: list):
    """Hooks that live for the `with` block only, removed whatever happens inside it."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def reusable(calibration):
    """Calibration that can be run more than once: a one-shot iterator is read into a list (the
    sequential methods run it again per stage when a model has no block list)."""
    if callable(calibration) or isinstance(calibration, (list, tuple, torch.Tensor)) or calibration is None:
        return calibration  # (a tensor and None are refused by run_calibration, with the reason)
    return list(calibration)


def run_calibration(model: nn.Module, calibration, grad: bool = False) -> int:
    """As `_run_calibration`, without autograd unless `grad` (the output-gradient statistics)."""
    with torch.set_grad_enabled(grad):
        return _run_calibration(model, calibration)


def _run_calibration(model: nn.Module, calibration) -> int:
    """Drive `model`'s forward passes over `calibration`, as GPTQ libraries take it:

    - a callable ``run(model)`` that makes the forward passes itself;
    - a list of 1-D 16 kHz waveforms (our upstreams: ``model(wav[None], wav_len)``, one at a time);
    - any other iterable of batches: a tensor (``model(x)``), a tuple (``model(*args)``) or a
      dict (``model(**kwargs)``), moved to the model's device.

    Returns the number of forward calls made. A batch with NaN/inf, an empty iterable, or a
    batch the model cannot take is a CalibrationError naming the batch index and shapes.
    """
    if calibration is None:
        raise CalibrationError("calibration is None: this method needs unlabelled model inputs")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if callable(calibration) and not isinstance(calibration, nn.Module):
        calls = [0]
        handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        try:
            calibration(model)
        finally:
            handle.remove()
        if not calls[0]:
            raise CalibrationError("the calibration callable ran no forward pass of the model")
        return calls[0]
    if is_waveforms(calibration):
        check_calibration(list(calibration))
        for wav in calibration:
            wav = wav.to(device).float()
            model(wav[None], torch.tensor([wav.numel()], device=device))
        return len(calibration)
    if isinstance(calibration, torch.Tensor):
        raise CalibrationError(f"calibration is one tensor {tuple(calibration.shape)}: give an iterable of batches, "
                               "e.g. [x] or list(x.split(1))")
    count = 0
    for i, batch in enumerate(calibration):
        for t in _tensors(batch):
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise CalibrationError(f"calibration batch {i} ({_shapes(batch)}) has NaN or infinite values")
        moved = map_tensors(lambda t: t.to(device), batch)
        try:
            if isinstance(moved, dict):
                model(**moved)
            elif isinstance(moved, (tuple, list)):
                model(*moved)
            else:
                model(moved)
        except Exception as err:
            raise CalibrationError(f"calibration batch {i} ({_shapes(batch)}) failed in {type(model).__name__}: "
                                   f"{type(err).__name__}: {err}") from err
        count += 1
    if not count:
        raise CalibrationError("calibration iterable is empty: give at least one batch of model inputs")
    return count


@torch.no_grad()
def collect_stats(
    model: nn.Module, layers: dict[str, nn.Module], calibration, need_hessian: bool, need_sample: bool,
    need_grads: bool = False, seed: int = 0,
) -> dict[str, LayerStats]:
    """Run the (full-precision) model over `calibration` (see run_calibration), recording each
    layer's inputs: X^T X is summed (memory bounded by the layer width, whatever the number of
    batches) and at most `max_rows` rows are kept as a sample.

    Only Linear layers get statistics (GPTQ on a convolution would need its inputs unfolded
    into kernel windows); convolutions use the weight-only methods.
    """
    stats = {name: LayerStats() for name, m in layers.items() if isinstance(m, nn.Linear)}
    if need_grads:
        return _collect_with_grads(model, layers, stats, calibration, seed)
    with removing([layers[name].register_forward_pre_hook(lambda _m, args, n=name: stats[n].add(args[0], need_hessian, need_sample))
                   for name in stats]):
        run_calibration(model, calibration)
    return stats


def final_output(out) -> torch.Tensor:
    """The model's final representation: the tensor, the first element of a tuple (recursively;
    our upstreams return (states, lengths), whose last state is taken), or `last_hidden_state`."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, (tuple, list)) and out:
        first = out[0]
        if isinstance(first, (tuple, list)) and first and all(isinstance(t, torch.Tensor) for t in first):
            return first[-1]
        return final_output(first)
    raise TypeError(f"cannot find the model's output tensor in a {type(out).__name__}")


def _collect_with_grads(model: nn.Module, layers: dict[str, nn.Module], stats: dict[str, LayerStats], calibration,
                        seed: int) -> dict[str, LayerStats]:
    """Input rows and, for the same rows, g^2 with g = J^T v: J the Jacobian of the final output
    with respect to the layer's output, v a random normal vector (one per forward pass), so that
    E[g^2] is the diagonal of J^T J, the Gauss-Newton Hessian of the output-matching loss
    ||f_q(x) - f(x)||^2 / 2 at the full-precision model. Label-free (no transcripts, no head):
    myQASR's "Hessian" metric, -mean((g (O_fp - O_q))^2), needs only this."""
    gen = torch.Generator().manual_seed(seed)

    def forward_hook(name):
        def fn(_m, args, output):
            st = stats[name]
            keep = st.max_rows - st._kept
            if not torch.is_grad_enabled():
                return None
            if not output.requires_grad:
                # nothing before this layer carries gradients (e.g. fairseq runs HuBERT's CNN under
                # no_grad): its output becomes the leaf they flow back to
                output = output.detach().requires_grad_(True)
            if keep > 0:
                st.add(args[0], need_hessian=False, need_sample=True)  # keeps the first `keep` rows
                output.register_hook(lambda g: st._grad_parts.append(g.detach().reshape(-1, g.shape[-1]).float()[:keep].pow(2).cpu()))
            # the model gets a copy: it may write into its layer outputs in place (fairseq scales
            # q in place), which would hide the gradient from the hook on the original
            return output.clone()
        return fn

    def make_input_leaf(_m, args, kwargs):
        for i, a in enumerate(args):  # the first float tensor argument becomes a leaf that needs gradients
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                return (*args[:i], a.detach().requires_grad_(True), *args[i + 1:]), kwargs
        for k, a in kwargs.items():
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                return args, {**kwargs, k: a.detach().requires_grad_(True)}
        return None  # token ids and the like: the layers' own outputs become the leaves

    def backward(_m, _args, out):
        final = final_output(out)
        if not final.requires_grad:
            raise CalibrationError(f"{type(model).__name__}'s output does not depend differentiably on the chosen layers")
        v = torch.randn(final.shape, generator=gen).to(final.device, final.dtype)
        final.backward(v)

    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)  # gradients flow to the activations only
    handles = [layers[n].register_forward_hook(forward_hook(n)) for n in stats]
    handles.append(model.register_forward_pre_hook(make_input_leaf, with_kwargs=True))
    handles.append(model.register_forward_hook(backward))
    try:
        with removing(handles):
            run_calibration(model, calibration, grad=True)
    finally:
        for p, flag in frozen.items():
            p.requires_grad_(flag)
    return stats


AUDIO_SUFFIXES = (".wav", ".flac")


def load_calibration_dir(directory: str, count: int | None = 32, sample_rate: int = 16_000) -> list[torch.Tensor]:
    """The first `count` (None: all) audio files (sorted paths, recursive) of `directory` as mono waveforms."""
    from pathlib import Path

    import soundfile as sf

    root = Path(directory)
    if not root.is_dir():
        raise CalibrationError(f"calibration directory not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)[:count]
    if not files:
        raise CalibrationError(f"no .wav/.flac files under {root}")
    wavs = []
    for path in files:
        try:
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as err:  # soundfile raises LibsndfileError/RuntimeError on corrupt files
            raise CalibrationError(f"cannot read calibration file {path}: {err}") from err
        if sr != sample_rate:
            raise CalibrationError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz (resample it first)")
        wavs.append(torch.from_numpy(data.mean(axis=1)))
    check_calibration(wavs)
    return wavs


def read_crop(path, crop: int, rng, sample_rate: int = 16_000) -> torch.Tensor:
    """A random window of at most `crop` samples of an audio file, reading only that window."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        start = rng.randrange(info.frames - crop) if info.frames > crop else 0
        data, sr = sf.read(str(path), start=start, frames=min(crop, info.frames), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError/RuntimeError on corrupt files
        raise CalibrationError(f"cannot read audio file {path}: {err}") from err
    if sr != sample_rate:
        raise CalibrationError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz (resample it first)")
    crop_wav = torch.from_numpy(data.mean(axis=1))
    if not torch.isfinite(crop_wav).all():
        raise CalibrationError(f"{path}: NaN or infinite samples; re-extract or delete the file")
    return crop_wav


def audio_files(directory: str) -> list[str]:
    """Every .wav/.flac under `directory` (sorted, recursive), for streaming."""
    from pathlib import Path

    root = Path(directory)
    if not root.is_dir():
        raise CalibrationError(f"audio directory not found: {root}")
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise CalibrationError(f"no .wav/.flac files under {root}")
    return files

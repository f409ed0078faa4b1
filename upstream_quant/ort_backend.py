"""ONNX Runtime as a deploy backend: an exported upstream (`onnx_export`) behind the upstream
interface, so suite rows (``SPEC@onnxruntime``), ``bench deploy`` and ``bench perf deploy`` run it
like any other form.

The graph takes one utterance (`Upstream.forward_one`), so a batch runs one utterance at a time
and its hidden states are zero-padded to the longest, with each utterance's own frame count as
its length: what the feature cache does for every backend already.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .onnx_export import EXTRA_HINT, ExportError, export_onnx, require_onnx
from .upstream import Upstream, check_batch


def session(path: str | Path, device: torch.device):
    """An ORT session on `device` (CUDA's provider when this onnxruntime has it, CPU's for the
    rest), with as many threads as PyTorch uses, so the two are timed alike."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ExportError(f"the onnxruntime backend needs onnxruntime: {EXTRA_HINT}") from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # ORT's warnings about unused initializers and providers are noise here
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    return ort.InferenceSession(str(path), options, providers=providers)


class OrtUpstream(Upstream):
    """An exported upstream run by ONNX Runtime; the attributes the featurizer and the tables
    read are copied from the model it was exported from."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, like: Upstream, report: dict, device: torch.device):
        super().__init__()
        self.name, self.hidden_size, self.num_hidden_states = like.name, like.hidden_size, like.num_hidden_states
        self.downsample_rate, self.group_prefixes = like.downsample_rate, dict(like.group_prefixes)
        if hasattr(like, "last_transformer_state"):
            self.last_transformer_state = like.last_transformer_state
        self.report = report
        self.file_bytes = os.path.getsize(path)  # the graph and its weights, as loaded
        self.session = session(path, device)  # holds the graph in memory: the file may go
        # so that .to(device) and a device lookup work as on any upstream; no weights live here
        self.register_buffer("anchor", torch.zeros(0, device=device), persistent=False)

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor):
        check_batch(wavs, wavs_len)
        outs = []
        for wav, n in zip(wavs.detach().float().cpu().numpy(), wavs_len.tolist()):
            outs.append(self.session.run(None, {"wav": np.ascontiguousarray(wav[None, : int(n)])}))
        frames = [o[0].shape[1] for o in outs]
        longest = max(frames)
        states = []
        for k in range(self.num_hidden_states):
            padded = np.zeros((len(outs), longest, outs[0][k].shape[2]), dtype=np.float32)
            for i, o in enumerate(outs):
                padded[i, : frames[i]] = o[k][0]
            states.append(torch.from_numpy(padded).to(wavs.device))
        lengths = torch.tensor(frames, device=wavs.device)
        return states, [lengths] * len(states)

    def resident_bytes(self) -> int:
        """The quantized layers' weight bytes as the graph holds them (codes, scales, zero points);
        the session's own resident memory is measured by ``bench perf deploy``."""
        return int(self.report["quantized_weight_bytes"])

    def layer_bytes(self, name: str) -> int:
        """One quantized layer's weight bytes in the graph."""
        return int(self.report["layer_bytes"][name])


def deploy_onnxruntime(model: nn.Module, device: torch.device, int8_inputs: bool = False) -> OrtUpstream:
    """`model` exported to ONNX (in a temporary folder, removed once the session holds the graph)
    and loaded in ONNX Runtime on `device`; ``int8_inputs`` as `export_onnx`'s."""
    require_onnx()
    with tempfile.TemporaryDirectory(prefix="lowbit-onnx-") as folder:
        path = Path(folder) / f"{getattr(model, 'name', 'upstream')}.onnx"
        report = export_onnx(model, path, int8_inputs=int8_inputs)
        out = OrtUpstream(path, model, report, device)
    backend = "onnxruntime-int8" if int8_inputs else "onnxruntime"
    out.deploy_backends, out.deploy_notes = {name: backend for name in report["layer_bytes"]}, {}
    return out

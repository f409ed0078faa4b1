"""ONNX export and the onnxruntime backend: the single-utterance path equals the batched one, the
MatMulNBits layout equals our layers, ONNX Runtime reproduces the reference path, and what it
cannot run is refused naming the layer."""

import pytest
import torch

from bench.cli import main
from upstream_quant import load_upstream
from upstream_quant.deploy import deploy, resident_weight_bytes
from upstream_quant.methods.binary import BinaryConfig
from upstream_quant.methods.uniform import UniformConfig
from upstream_quant.onnx_export import (
    DequantizeConv, ExportError, MatMulNBitsLinear, block_size, export_onnx, onnx_bits, require_onnx,
)
from upstream_quant.packed import load_packed, save_packed
from upstream_quant.qweight import QuantizedLayer
from upstream_quant.quantize import quantize

ort = pytest.importorskip("onnxruntime")


def _cosines(outs, ref) -> list[float]:
    return [float(torch.nn.functional.cosine_similarity(torch.from_numpy(o).flatten(), r.flatten(), dim=0))
            for o, r in zip(outs, ref)]


@pytest.mark.parametrize("family", ["hubert", "distiller", "whisper"])
def test_the_single_utterance_path_equals_the_batched_forward(family, tiny_hubert, tiny_distiller):
    model = {"hubert": tiny_hubert, "distiller": tiny_distiller}.get(family) or load_upstream("whisper_tiny_en", device="cpu")
    torch.manual_seed(0)
    for n in (8000, 8321):  # an even and an odd frame count (the fairseq encoder pads odd ones)
        wav = 0.1 * torch.randn(1, n)
        with torch.no_grad():
            one, batched = model.forward_one(wav), model(wav, torch.tensor([n]))[0]
        assert len(one) == len(batched) == model.num_hidden_states
        for a, b in zip(one, batched):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("config", [
    BinaryConfig(), BinaryConfig(group_size=16), UniformConfig(bits=2), UniformConfig(bits=3, symmetric=False, group_size=16),
    UniformConfig(bits=4, group_size=32), UniformConfig(bits=6), UniformConfig(bits=8, symmetric=False),
])
def test_the_matmulnbits_layout_computes_our_layer(tiny_hubert, config):
    quantized = quantize(tiny_hubert, config, progress=False)
    layer = next(m for m in quantized.modules() if isinstance(m, QuantizedLayer))
    nbits = MatMulNBitsLinear(layer)
    assert nbits.bits == onnx_bits(layer.bits) and nbits.bits in (2, 4, 8)
    assert nbits.b.shape[1] * nbits.block >= layer.codes.shape[1]  # blocks cover the row
    x = torch.randn(3, 5, layer.codes.shape[1])
    assert torch.allclose(nbits(x), layer(x), atol=1e-5)


def test_binary_convolutions_dequantize_exactly(tiny_hubert):
    quantized = quantize(tiny_hubert, BinaryConfig(targets=("cnn",)), progress=False)
    layer = next(m for m in quantized.modules() if isinstance(m, QuantizedLayer) and m.kind == "conv1d")
    x = torch.randn(2, layer.codes.shape[1], 40)
    assert torch.allclose(DequantizeConv(layer)(x), layer(x), atol=1e-5)


def test_per_row_scales_become_power_of_two_blocks_of_the_row(tiny_hubert):
    quantized = quantize(tiny_hubert, UniformConfig(bits=4), progress=False)
    layer = next(m for m in quantized.modules() if isinstance(m, QuantizedLayer))
    assert block_size(layer) == 32 and layer.codes.shape[1] % block_size(layer) == 0


@pytest.mark.parametrize("family", ["hubert", "distiller"])
def test_onnx_runtime_runs_the_export_as_the_reference_path_at_any_length(tmp_path, family, tiny_hubert, tiny_distiller):
    model = tiny_hubert if family == "hubert" else tiny_distiller
    quantized = quantize(model, UniformConfig(bits=2, group_size=16, symmetric=False), progress=False)
    quantized = quantize(quantized, UniformConfig(bits=4, targets=("cnn",)), progress=False)
    save_packed(quantized, tmp_path / "q.safetensors")
    packed = load_packed(tmp_path / "q.safetensors")  # fp16 tensors: stored in fp16 in the graph too
    report = export_onnx(packed, tmp_path / "q.onnx")
    assert report["layers"]["MatMulNBits 2-bit"] > 0 and report["layers"]["DequantizeLinear+Conv (uint8 codes)"] == 7
    assert report["fp16_tensors"] > 0
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [f"hidden_state_{i}" for i in range(packed.num_hidden_states)]
    for n in (6000, 9999):  # one graph, any length
        wav = 0.1 * torch.randn(1, n, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            ref = packed.forward_one(wav)
        outs = session.run(None, {"wav": wav.numpy()})
        assert [o.shape for o in outs] == [tuple(r.shape) for r in ref]
        assert min(_cosines(outs, ref)) > 0.9999


def test_whisper_exports_with_its_log_mel_front_end_at_the_packed_files_size(tmp_path):
    quantized = quantize(load_upstream("whisper_tiny_en", device="cpu"), UniformConfig(bits=4), progress=False)
    save_packed(quantized, tmp_path / "w.safetensors")
    packed = load_packed(tmp_path / "w.safetensors")
    report = export_onnx(packed, tmp_path / "w.onnx")
    assert report["layers"] == {"MatMulNBits 4-bit": 24}
    # codes as stored; the scale repeated over 3 blocks a row is the difference
    assert 1.0 <= report["quantized_weight_bytes"] / report["stored_weight_bytes"] < 1.03
    assert report["file_bytes"] / (tmp_path / "w.safetensors").stat().st_size < 1.1
    session = ort.InferenceSession(str(tmp_path / "w.onnx"), providers=["CPUExecutionProvider"])
    wav = 0.1 * torch.randn(1, 24000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = packed.forward_one(wav)
    assert min(_cosines(session.run(None, {"wav": wav.numpy()}), ref)) > 0.9999


def test_the_onnxruntime_backend_runs_a_padded_batch_like_the_reference(tiny_hubert, batch):
    quantized = quantize(tiny_hubert, UniformConfig(bits=4, group_size=16), progress=False)
    deployed = deploy(quantized, "onnxruntime")
    assert set(deployed.deploy_backends.values()) == {"onnxruntime"}
    assert len(deployed.deploy_backends) == sum(isinstance(m, QuantizedLayer) for m in quantized.modules())
    wavs, wav_lens = batch
    with torch.no_grad():
        ours, lens = deployed(wavs, wav_lens)
        ref_lens = quantized(wavs, wav_lens)[1]
        # each utterance alone, as the graph runs it (HuBERT's CNN group norm sees a batch's padding)
        alone = [quantized(wavs[i:i + 1, :n], wav_lens[i:i + 1])[0] for i, n in enumerate(wav_lens.tolist())]
    assert torch.equal(lens[-1], ref_lens[-1])
    for k, a in enumerate(ours):
        for i, n in enumerate(lens[-1].tolist()):  # the frames each utterance has; padding is zeros here
            assert torch.allclose(a[i, :n], alone[i][k][0], atol=1e-4)
            assert not a[i, n:].any()
    ref = alone[0]
    # codes, fp16 scales: about 4.1 bits a weight, against the reference's float32 copy
    assert resident_weight_bytes(deployed) < resident_weight_bytes(quantized) / 8
    int8 = deploy(quantized, "onnxruntime-int8")  # 8-bit inputs: close, not equal
    with torch.no_grad():
        close = int8(*batch)[0][-1]
    assert float(torch.nn.functional.cosine_similarity(close[0].flatten(), ref[-1][0].flatten(), dim=0)) > 0.99


def test_what_onnx_runtime_cannot_run_is_refused_naming_the_layer(tiny_hubert, tmp_path):
    with_inputs = quantize(tiny_hubert, UniformConfig(bits=4, act_bits=8), progress=False)
    with pytest.raises(ExportError, match=r"cannot run \d+ layer\(s\).*model\.encoder\.layers\.0\..*act_bits"):
        export_onnx(with_inputs, tmp_path / "x.onnx")
    odd_groups = quantize(tiny_hubert, UniformConfig(bits=4, group_size=8), progress=False)
    with pytest.raises(ExportError, match="groups of 8"):
        export_onnx(odd_groups, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_a_missing_onnxruntime_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ExportError, match=r"onnxruntime: pip install 'lowbit-speech-bench\[onnx\]'"):
        require_onnx()


def test_bench_export_writes_a_checked_graph_and_refuses_a_full_precision_file(tiny_hubert, tmp_path, capsys):
    save_packed(quantize(tiny_hubert, BinaryConfig(), progress=False), tmp_path / "b.safetensors")
    assert main(["export", "--packed", str(tmp_path / "b.safetensors"), "--out", str(tmp_path / "b.onnx"), "--seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert "MatMulNBits 2-bit (holding 1-bit codes)" in out and ": ok" in out
    save_packed(tiny_hubert, tmp_path / "fp.safetensors")
    assert main(["export", "--packed", str(tmp_path / "fp.safetensors"), "--out", str(tmp_path / "fp.onnx")]) == 2
    assert "holds no quantized layer" in capsys.readouterr().err
    assert not (tmp_path / "fp.onnx").exists()


def test_suite_specs_take_the_onnxruntime_backends():
    from bench.suites import QuantSpec

    assert QuantSpec.parse("uniform:4@onnxruntime").deploy == "onnxruntime"
    assert QuantSpec.parse("qat:2:s150@onnxruntime-int8").deploy == "onnxruntime-int8"
    with pytest.raises(ValueError, match="onnxruntime"):
        QuantSpec.parse("uniform:4@onnx")


@pytest.mark.slow
def test_perf_deploy_times_the_onnx_runtime_peers_and_the_fastest_fp32_in_each_round(tmp_path, capsys, monkeypatch):
    import json

    import upstream_quant.accounting

    # the paper's unit (HuBERT Base) timed on both runtimes costs a minute here; Whisper is its own unit
    monkeypatch.setattr(upstream_quant.accounting, "REFERENCE_UPSTREAM", "whisper_tiny_en")
    out = tmp_path / "deploy" / "whisper_tiny_en.json"
    assert main(["perf", "deploy", "--upstream", "whisper_tiny_en", "--seconds", "0.5", "--reps", "1", "--batch", "1",
                 "--configs", "4:onnxruntime", "--alongside", "distil_whisper_tiny_en", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = {(r["upstream"], r["backend"]): r for r in record["rows"]}
    assert {b for u, b in rows if u == "whisper_tiny_en"} == {"fp32", "ort-fp32", "ort-int8-matmul", "ort-int8-all", "onnxruntime"}
    assert {b for u, b in rows if u == "distil_whisper_tiny_en"} == {"fp32", "ort-fp32"}
    torch_fp, ort_fp = rows[("whisper_tiny_en", "fp32")], rows[("whisper_tiny_en", "ort-fp32")]
    fastest = min(torch_fp["latency_s"], ort_fp["latency_s"])
    for r in record["rows"]:  # one round: each ratio is the row's latency over the round's fastest fp32
        assert r["measured_vs_best_fp32"] == pytest.approx(r["latency_s"] / fastest, rel=1e-3)
    assert min(torch_fp["measured_vs_best_fp32"], ort_fp["measured_vs_best_fp32"]) == pytest.approx(1.0)
    four = rows[("whisper_tiny_en", "onnxruntime")]
    assert four["linear_weights_mb"] == pytest.approx(four["ideal_mb"], rel=0.03)  # 4-bit codes in the graph
    assert record["fastest_fp32"] in ("PyTorch", "ONNX Runtime") and "vs best" in capsys.readouterr().out
    assert [r["measured_vs_reference"] for r in record["rows"]] == [r["measured_vs_best_fp32"] for r in record["rows"]]

"""Packed files as inputs: `bench cost --packed`, `--checkpoint PACKED`, and a suite row `packed:FILE`."""

import json
import shutil

import pytest
import torch

from bench.cli import main
from bench.suites import QuantSpec, SuiteError, load_suite
from upstream_quant import load_upstream
from upstream_quant.accounting import cost_report, model_cost
from upstream_quant.packed import load_packed, save_packed
from upstream_quant.qweight import QuantizedLayer
from upstream_quant.quantize import quantize
from upstream_quant.methods.uniform import UniformConfig

from conftest import tiny_corpus, tiny_suite_toml


@pytest.fixture
def files(tmp_path, tiny_distiller):
    """A full-precision and a 2-bit packed file of the same (tiny) DistilHuBERT."""
    fp = save_packed(tiny_distiller, tmp_path / "fp.safetensors")
    two = save_packed(quantize(tiny_distiller, UniformConfig(bits=2), progress=False), tmp_path / "two.safetensors")
    return fp, two


def test_bench_cost_packed_reads_the_cost_of_the_file_as_stored(files, capsys):
    fp, two = files
    assert main(["cost", "--packed", str(two), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    model = load_packed(two)
    expected = model_cost(model)
    assert data["upstream"] == "distilhubert"
    assert data["storage_mb"] == pytest.approx(expected.storage_mb) and data["est_runtime"] == pytest.approx(expected.est_runtime)
    assert data["layers_per_bits"] == {"2": sum(isinstance(m, QuantizedLayer) for m in model.modules())}
    assert main(["cost", "--packed", str(fp), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["layers_per_bits"] == {} and full["storage_mb"]["paper"] > 4 * data["storage_mb"]["stored"] / 4
    assert full["storage_mb"]["paper"] > data["storage_mb"]["paper"]
    assert main(["cost", "--packed", str(two)]) == 0
    assert " 2 bits" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="leave out --upstream"):
        main(["cost", "--packed", str(two), "--upstream", "distilhubert"])
    assert main(["cost", "--packed", str(two.with_name("missing.safetensors"))]) == 2


def test_bench_cost_packed_of_a_full_size_model_equals_the_named_cost(tmp_path, capsys):
    """The file's cost, read from its layers, is the cost `bench cost` names for that bit width."""
    up = load_upstream("distilhubert", random_init=True, device="cpu")
    path = save_packed(quantize(up, UniformConfig(bits=2), progress=False), tmp_path / "d2.safetensors")
    assert main(["cost", "--packed", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    named = cost_report("distilhubert", 2)
    assert data["storage_mb"]["paper"] == pytest.approx(named.storage_mb["paper"], abs=1e-9)
    assert data["est_runtime"]["encoder"] == pytest.approx(named.est_runtime["encoder"])


def test_a_full_precision_packed_file_is_a_checkpoint_and_a_quantized_one_is_refused(files, tiny_distiller, tmp_path):
    fp, two = files
    up = load_upstream("distilhubert", checkpoint=fp, device="cpu")
    for name, t in tiny_distiller.state_dict().items():
        if name in up.state_dict() and t.is_floating_point():
            assert torch.equal(up.state_dict()[name], t.half().float()), name  # the file's fp16, nothing else
    with pytest.raises(ValueError, match="quantized model .* full-precision"):
        load_upstream("distilhubert", checkpoint=two)
    with pytest.raises(ValueError, match="a packed distilhubert model, not hubert_base"):
        load_upstream("hubert_base", checkpoint=fp)
    assert isinstance(load_upstream("distilhubert", checkpoint=two, allow_quantized=True).get_submodule(
        next(n for n, m in load_packed(two).named_modules() if isinstance(m, QuantizedLayer))), QuantizedLayer)
    out = tmp_path / "q.safetensors"
    assert main(["quantize", "--upstream", "distilhubert", "--checkpoint", str(fp), "--method", "binary", "--bits", "1",
                 "--out", str(out)]) == 0
    assert load_packed(out).name == "distilhubert"
    assert main(["quantize", "--upstream", "distilhubert", "--checkpoint", str(two), "--method", "binary", "--bits", "1",
                 "--out", str(tmp_path / "qq.safetensors")]) == 2
    assert not (tmp_path / "qq.safetensors").exists()


SUITE = tiny_suite_toml("{root}", """
[[runs]]
upstreams = ["{upstream}"]
quant = ["packed:{file}"]
data = ["chirps"]
protocol = "retrain"
""", max_steps=6)


def test_a_suite_row_packed_file_is_hashed_by_content_and_checked_against_its_upstream(files, tmp_path):
    fp, two = files
    root = tiny_corpus(tmp_path)
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE.format(root=root, upstream="distilhubert", file=two))
    run = load_suite(str(suite)).runs[0]
    assert run.quant.method == "packed" and run.quant.label == "packed-two"
    moved = tmp_path / "elsewhere" / "two.safetensors"
    moved.parent.mkdir()
    shutil.copy(two, moved)
    suite.write_text(SUITE.format(root=root, upstream="distilhubert", file=moved))
    assert load_suite(str(suite)).runs[0].config_hash == run.config_hash  # where it lies does not matter
    other = save_packed(quantize(load_packed(fp), UniformConfig(bits=3), progress=False), tmp_path / "x" / "two.safetensors")
    suite.write_text(SUITE.format(root=root, upstream="distilhubert", file=other))
    assert load_suite(str(suite)).runs[0].config_hash != run.config_hash  # same name, other content
    suite.write_text(SUITE.format(root=root, upstream="hubert_base", file=two))
    with pytest.raises(SuiteError, match="holds a distilhubert model"):
        load_suite(str(suite))
    with pytest.raises(ValueError, match="no such file"):
        QuantSpec.parse(f"packed:{tmp_path / 'nope.safetensors'}")
    assert "file" not in QuantSpec.parse("uniform:2").as_dict()  # other runs' hashes are as they were


@pytest.mark.slow
def test_bench_run_evaluates_a_packed_file_as_it_is(files, tmp_path, capsys):
    fp, two = files
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE.format(root=tiny_corpus(tmp_path), upstream="distilhubert", file=two))
    store = tmp_path / "store"
    assert main(["run", str(suite), "--store", str(store), "--no-progress"]) == 0
    row = json.loads((store / "tiny" / "runs.jsonl").read_text().splitlines()[0])
    assert row["method"] == "packed" and row["bit_widths"] == [2] and row["packed"]["file"] == str(two)
    assert row["stored_mb"] == pytest.approx(model_cost(load_packed(two)).storage_mb["stored"], abs=1e-3)
    assert row["packed_mb"] == round(two.stat().st_size / 1e6, 3)

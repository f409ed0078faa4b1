"""Bad numbers and bad files get clear errors instead of garbage (issue 14, items 4-6)."""

import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bench.cli import main
from upstream_quant.methods.binary import BinaryConfig
from upstream_quant.calibration import CalibrationError, check_calibration
from upstream_quant.io import write_atomic
from upstream_quant.methods.mixed import BudgetError, SizeModel, allocate_bits
from upstream_quant.packed import save_packed
from upstream_quant.quantize import quantize
from upstream_quant.methods.uniform import UniformConfig


@pytest.mark.parametrize("act_bits", [0, 1, 17, 99])
def test_activation_bits_outside_2_to_16_are_refused_before_any_work(tiny_hubert, act_bits):
    with pytest.raises(ValueError, match="act_bits must be None or an integer in 2..16"):
        quantize(tiny_hubert, UniformConfig(bits=4, act_bits=act_bits), progress=False)


def test_two_bit_activations_still_give_finite_states(tiny_hubert, batch):
    q = quantize(tiny_hubert, UniformConfig(bits=4, act_bits=2), progress=False)
    with torch.no_grad():
        assert all(torch.isfinite(s).all() for s in q(*batch)[0])


@pytest.mark.parametrize("group_size", [0, -8])
def test_group_size_below_one_is_refused(tiny_hubert, group_size):
    for config in (UniformConfig(bits=4, group_size=group_size), BinaryConfig(group_size=group_size)):
        with pytest.raises(ValueError, match="group_size must be None"):
            quantize(tiny_hubert, config, progress=False)


@pytest.mark.parametrize("budget", [math.nan, math.inf, -1.0, 0.0])
def test_budget_must_be_a_positive_number(budget):
    with pytest.raises(BudgetError, match="positive number of MB"):
        allocate_bits({"a": 1.0}, SizeModel(0, {"a": (8000, 10)}), budget)


@pytest.mark.parametrize("seconds", ["inf", "nan", "-3", "0", "1e9"])
def test_bench_cost_refuses_unusable_lengths(seconds):
    with pytest.raises(SystemExit, match="--seconds"):
        main(["cost", "--upstream", "distilhubert", "--seconds", seconds])


def test_non_finite_audio_is_an_error_naming_the_file_and_data_check_reports_it(tmp_path, capsys):
    from downstream import audio

    d = tmp_path / "corpus" / "train" / "1" / "1"
    d.mkdir(parents=True)
    good = 0.1 * np.sin(np.arange(16000) / 10).astype(np.float32)
    bad = good.copy()
    bad[100] = np.nan
    sf.write(d / "1-1-0000.wav", good, 16000, subtype="FLOAT")
    sf.write(d / "1-1-0001.wav", bad, 16000, subtype="FLOAT")
    (d / "1-1.trans.txt").write_text("1-1-0000 GO\n1-1-0001 STOP\n")
    with pytest.raises(audio.AudioError, match=r"1-1-0001.wav: 1 sample\(s\) are NaN or infinite"):
        audio.read(d / "1-1-0001.wav")
    code = main(["data", "check", "librispeech", str(tmp_path / "corpus"), "--splits", "train"])
    out = capsys.readouterr().out
    assert code == 1 and "1 usable utterances of 2" in out and "1-1-0001.wav" in out
    with pytest.raises(CalibrationError, match="NaN or infinite"):
        check_calibration([torch.from_numpy(bad)])
    with pytest.warns(UserWarning, match="shorter than 0.5 s"):
        check_calibration([torch.ones(800)])


def test_written_files_respect_the_umask(tmp_path, tiny_hubert):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "rows.jsonl", "{}\n")
        save_packed(quantize(tiny_hubert, UniformConfig(bits=4), progress=False), tmp_path / "m.safetensors")
        os.umask(0o077)
        write_atomic(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "rows.jsonl").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600


def test_a_failed_packed_write_leaves_no_temporary_file(tmp_path, tiny_hubert):
    target = tmp_path / "out"
    target.mkdir()  # --out an existing directory
    with pytest.raises(OSError):
        save_packed(quantize(tiny_hubert, UniformConfig(bits=4), progress=False), target)
    assert list(tmp_path.iterdir()) == [target] and not list(target.iterdir())


def _edit_manifest(path, out, edit):
    """Rewrite a packed file with its manifest changed by `edit` and its tensors as they were."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        manifest = json.loads(fh.metadata()["manifest"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    edit(manifest)
    save_file(tensors, str(out), metadata={"manifest": json.dumps(manifest)})
    return out


@pytest.mark.parametrize("edit", [
    lambda m: m.update(upstream="whirper_tiny_en"),
    lambda m: next(iter(m["layers"].values())).update(bits=3),
    lambda m: next(iter(m["layers"].values())).update(zero=1.0),
    lambda m: m["architecture"]["model_cfg"].update(encoder_layers=1),
])
def test_an_edited_manifest_is_refused(tiny_hubert, tmp_path, edit):
    from upstream_quant.packed import PackedFileError, load_packed

    path = save_packed(quantize(tiny_hubert, UniformConfig(bits=4), progress=False), tmp_path / "m.safetensors")
    with pytest.raises(PackedFileError, match="sha256 of the manifest and tensors"):
        load_packed(_edit_manifest(path, tmp_path / "edited.safetensors", edit))


def test_every_single_bit_flip_in_the_header_is_a_packed_file_error_or_harmless(tiny_hubert, tmp_path):
    import random

    from upstream_quant.packed import PackedFileError, load_packed
    from upstream_quant.qweight import QuantizedLayer

    model = quantize(tiny_hubert, UniformConfig(bits=3, symmetric=False, group_size=8), progress=False)
    path = save_packed(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    reference = {n: m.weight for n, m in load_packed(path, device="cpu").named_modules() if isinstance(m, QuantizedLayer)}
    rng = random.Random(0)
    loaded = 0
    for _ in range(250):
        flipped = bytearray(data)
        flipped[rng.randrange(header)] ^= 1 << rng.randrange(8)
        bad = tmp_path / "flip.safetensors"
        bad.write_bytes(bytes(flipped))
        try:
            again = load_packed(bad, device="cpu")
        except PackedFileError:
            continue
        loaded += 1  # a flip that changes nothing the file means (e.g. JSON key order) must load the same model
        for name, weight in reference.items():
            assert torch.equal(again.get_submodule(name).weight, weight)
    assert loaded < 25


def test_unknown_upstreams_and_empty_selections_are_one_line_errors(tmp_path, capsys):
    from bench.suites import SuiteError, load_suite

    assert main(["quantize", "--upstream", "hubertt", "--method", "uniform", "--bits", "4", "--random-init",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "bench: error: unknown upstream 'hubertt'; known:" in capsys.readouterr().err
    suite = tmp_path / "s.toml"
    suite.write_text('[data.d]\nlayout = "librispeech"\nroot = "x"\n[schedule.asr]\npreset = "mini_asr"\n'
                     '[[runs]]\nupstreams = ["wav2vec3"]\ndata = ["d"]\n')
    with pytest.raises(SuiteError, match=r"s.toml: unknown upstream\(s\) \['wav2vec3'\]"):
        load_suite(str(suite))
    assert main(["run", "mini", "--only", "*nothing-like-this*", "--dry-run"]) == 2
    assert "matches no run of suite mini; its runs include whisper_tiny_en/fp/retrain" in capsys.readouterr().err


@pytest.mark.parametrize("out, message", [
    ("DIR", "is a directory; give a file path"),
    ("FILE/m.safetensors", "is a file, not a folder"),
    ("/sys/m.safetensors", "cannot write in /sys"),
])
def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys, monkeypatch, out, message):
    """Each fails before the upstream is loaded (a load would be the expensive part)."""
    import upstream_quant

    (tmp_path / "DIR").mkdir()
    (tmp_path / "FILE").write_text("x")
    if out.startswith("/sys") and os.access("/sys", os.W_OK) and os.path.exists("/sys/m.safetensors"):
        pytest.skip("/sys is writable here")
    target = out if out.startswith("/") else str(tmp_path / out)
    monkeypatch.setattr(upstream_quant, "load_upstream", lambda *a, **k: pytest.fail("loaded before checking --out"))
    for argv in (["quantize", "--upstream", "distilhubert", "--random-init", "--method", "uniform", "--bits", "4"],
                 ["mixed", "--upstream", "distilhubert", "--budget-mb", "5", "--calib-dir", str(tmp_path)],
                 ["qat", "--upstream", "distilhubert", "--method", "binary", "--bits", "1", "--audio", str(tmp_path)]):
        assert main([*argv, "--out", target]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR", "FILE"]  # nothing left behind
    assert list((tmp_path / "DIR").iterdir()) == []


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--batch-size", "0"), ("--lr", "nan"), ("--crop-seconds", "-1"),
                                         ("--pack-seconds", "0")])
def test_qat_settings_that_cannot_train_are_refused_before_writing(tmp_path, capsys, flag, value):
    out = tmp_path / "q.safetensors"
    argv = ["qat", "--upstream", "distilhubert", "--method", "binary", "--bits", "1", "--audio", str(tmp_path),
            flag, value, "--out", str(out)]
    assert main(argv) == 2
    assert f"QATConfig.{flag[2:].replace('-', '_')} = " in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_decoder_loss_for_an_upstream_without_a_decoder_is_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "q.safetensors"
    argv = ["qat", "--upstream", "distil_whisper_tiny_en", "--method", "binary", "--bits", "1", "--audio", str(tmp_path),
            "--loss", "decoder", "--out", str(out)]
    assert main(argv) == 2
    assert "a decoder loss needs an upstream with its own text decoder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_store_line_that_is_not_an_object_is_skipped_with_a_warning(tmp_path):
    from bench.results import load_rows

    path = tmp_path / "runs.jsonl"
    path.write_text('{"config_hash": "a"}\n[1, 2]\n"text"\n{"config_hash": "b"}\n')
    with pytest.warns(UserWarning, match="not a row object") as caught:
        rows = load_rows(path)
    assert [str(w.message).split("runs.jsonl:")[1] for w in caught] == [
        "2: a JSON list, not a row object; skipped", "3: a JSON str, not a row object; skipped"]
    assert [r["config_hash"] for r in rows] == ["a", "b"]


@pytest.mark.parametrize("name", ["../../escape", "/abs", ".hidden", "a/b", ""])
def test_a_suite_name_cannot_leave_the_store(tmp_path, name):
    from bench.suites import SuiteError, load_suite

    suite = tmp_path / "s.toml"
    suite.write_text(f'name = "{name}"\n[data.d]\nlayout = "librispeech"\nroot = "x"\n[schedule.asr]\npreset = "mini_asr"\n'
                     '[[runs]]\nupstreams = ["fbank"]\ndata = ["d"]\n')
    with pytest.raises(SuiteError, match="letters, digits"):
        load_suite(str(suite))


def test_dry_run_finds_what_would_fail_hours_later(tmp_path, capsys, monkeypatch):
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[data.d]\nlayout = "librispeech"\nroot = "missing-root"\n'
                     '[data.e]\nlayout = "librispeech"\nroot = "also-missing"\nfrobnicate = 1\n'
                     '[schedule.asr]\npreset = "superb_asrr"\n[schedule.ks]\npreset = "superb_ks"\nlr = 1e-4\nwidth = 3\n'
                     '[[runs]]\nupstreams = ["hubert_base", "fbank"]\ndata = ["d"]\n'
                     '[[runs]]\nupstreams = ["fbank"]\ndata = ["e"]\ntasks = ["ks"]\n')
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    import upstream_quant.loading as loading

    monkeypatch.setattr(loading, "_s3prl_cache_path", lambda url: tmp_path / "no-cache" / Path(url).name)
    assert main(["run", str(suite), "--dry-run", "--store", str(tmp_path / "store")]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM: " in out
    for expected in ("preset 'superb_asrr' unknown", "[schedule.ks] has an unknown field", "[data.e] has an unknown field",
                     "data d: root missing-root does not exist; pass --data d=PATH",
                     "upstream hubert_base: not cached and https://huggingface.co/s3prl/converted_ckpts/resolve/main/"
                     "hubert_base_ls960.pt unreachable: give --checkpoint hubert_base=PATH"):
        assert expected in out, expected
    assert "ok: upstream fbank: weights in the installation" in out
    assert main(["run", "mini", "--dry-run", "--store", str(tmp_path / "store")]) == 0
    assert "PROBLEM" not in capsys.readouterr().out
    assert main(["run", "mini-ptq", "--dry-run", "--store", str(tmp_path / "store"), "--only", "*mixed*"]) == 0
    assert "budget 2.25 bits a weight on average (allocated at run time)" in capsys.readouterr().out
    # groups of 64 with zero points: what the packed file stores (3.321 MB measured), not a scale per row;
    # QAT from a mixed start: widths allocated at run time, as for mixed precision itself
    assert main(["run", "mini-ptq", "--dry-run", "--store", str(tmp_path / "store"), "--only", "*dec*"]) == 0
    out = capsys.readouterr().out
    assert "from-gptq-dec-scales-p28/retrain/e2e_asr-read/seed0 stored    3.32 MB" in out
    assert "from-mixed2.25b-dec-scales-p28/retrain/e2e_asr-read/seed0 budget 2.25 bits a weight on average" in out


def test_bench_run_refuses_a_store_it_cannot_write_before_any_run(tmp_path, capsys):
    (tmp_path / "store").write_text("a file")
    assert main(["run", "mini", "--store", str(tmp_path / "store"), "--only", "whisper_tiny_en/fp/retrain*"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err

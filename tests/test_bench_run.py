"""Suites, the runner and its store: resumable, no duplicates, tables and plots from rows."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.suites import QuantSpec, SuiteError, load_suite, select
from conftest import tiny_corpus, tiny_suite_toml

SUITE = tiny_suite_toml("{root}", """
[[runs]]
upstreams = ["fbank"]
quant = ["fp"]
data = ["chirps"]
protocol = "retrain"
seeds = [0, 1]

[[runs]]
upstreams = ["fbank"]
quant = ["fp"]
data = ["chirps"]
protocol = "reuse"
""")


@pytest.fixture
def tiny_suite(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(SUITE.format(root=tiny_corpus(tmp_path)))
    return path


def test_quant_spec_parsing():
    assert QuantSpec.parse("uniform:4:mse:g128").label == "uniform4-mse-g128"
    assert QuantSpec.parse("binary:1").config().__class__.__name__ == "BinaryConfig"
    assert QuantSpec.parse("fp").label == "fp"
    mixed = QuantSpec.parse("mixed:3.2:calib=F:ascending:cosine")
    assert (mixed.budget_mb, mixed.calib, mixed.order, mixed.clip) == (3.2, "F", "ascending", "cosine")
    assert mixed.label == "mixed3.2MB-F-ascending-cosine" and mixed.config() is None
    assert QuantSpec.parse("qat:2:s50").qat_steps == 50 and QuantSpec.parse("qat:1").label == "qat1"
    for bad in ("uniform", "uniform:x", "uniform:4:zz", "binary:2", "magic:4", "mixed:x", "mixed:3:zz", "qat:9", "qat:2:q"):
        with pytest.raises(ValueError):
            QuantSpec.parse(bad)


def test_layers_all_quantizes_every_feature_layer_and_keeps_other_hashes():
    from upstream_quant.select import FEATURE_GROUPS

    spec = QuantSpec.parse("uniform:8:layers=all@int8-dynamic")
    assert spec.layers == "all" and spec.deploy == "int8-dynamic" and spec.label == "uniform8-all@int8-dynamic"
    assert spec.config().targets == FEATURE_GROUPS and "cnn" in FEATURE_GROUPS and "heads" not in FEATURE_GROUPS
    assert QuantSpec.parse("uniform:8").config().targets == ("transformer",)
    assert QuantSpec.parse("uniform:8:layers=transformer").as_dict() == QuantSpec.parse("uniform:8").as_dict()
    assert "layers" not in QuantSpec.parse("gptq:3").as_dict()  # stored hashes stay as they were
    for bad, message in [("fp:layers=all", "after a method"), ("uniform:8:layers=cnn", "'all' or 'transformer'"),
                         ("mixed:4.5:layers=all", "chooses its own layers")]:
        with pytest.raises(ValueError, match=message):
            QuantSpec.parse(bad)


def test_shipped_suites_parse_and_expand():
    mini = load_suite("mini")
    names = [r.name for r in mini.runs]
    assert len(names) == len(set(names)) and any("/binary1/" in n for n in names)
    assert {r.upstream for r in mini.runs} == {"whisper_tiny_en", "distil_whisper_tiny_en"}
    superb, deploy = load_suite("mini-superb"), load_suite("mini-deploy")
    assert {r.upstream for r in superb.runs} == {"whisper_tiny_en", "distil_whisper_tiny_en", "fbank"}
    assert {(r.task, r.data) for r in superb.runs} == {("asr", "digits"), ("pr", "digits"), ("ic", "intents"),
                                                       ("sid", "speakers"), ("asv", "speakers_sv"), ("sf", "slots"),
                                                       ("sd", "mixtures"), ("qbe", "terms")}
    assert sum(1 for r in deploy.runs if r.quant.deploy) == 9 * 3
    paper = load_suite("paper")
    assert {r.upstream for r in paper.runs} == {"hubert_base", "distilhubert"}
    assert [r.schedule.get("layer") for r in paper.runs if r.upstream == "distilhubert"] == ["last_transformer"]
    load_suite("paper-ks")
    personal = load_suite("paper-personal")
    mixed = [r for r in personal.runs if r.quant.method == "mixed" and r.task == "asr"]
    assert {r.quant.clip for r in mixed} == {"minmax", "cosine", "hessian"} and len(mixed) == 2 * (48 + 8 + 96)
    e2e = [r for r in personal.runs if r.task == "e2e_asr"]  # myQASR's own end-to-end evaluation
    assert {r.upstream for r in e2e} == {"wav2vec2_base_960h"} and len([r for r in e2e if r.quant.method == "mixed"]) == 48
    assert {r.upstream for r in personal.runs} == {"wav2vec2_base", "hubert_base", "wav2vec2_base_960h"}
    assert all(r.quant.calib in personal.data_tables for r in mixed)
    hashes = [r.config_hash for r in mini.runs]
    shards = [select(mini.runs, shard=f"{i}/3") for i in range(3)]
    assert sorted(r.config_hash for s in shards for r in s) == sorted(hashes)
    assert all("gptq" in r.name for r in select(mini.runs, only="*gptq*"))
    # mini: the headline (digits heads, end to end); the other tasks in mini-superb, the
    # post-training ablations in mini-ptq
    assert {(r.task, r.data) for r in mini.runs} == {("asr", "digits"), ("e2e_asr", "passages")}
    assert {r.seed for r in mini.runs if r.task != "e2e_asr"} == {0, 1, 2} and mini.student == "distil_whisper_tiny_en"
    ptq = load_suite("mini-ptq").runs
    assert {r.quant.method for r in ptq} == {"uniform", "binary", "gptq", "recon", "fp", "mixed", "qat"}
    assert {r.task for r in ptq if r.quant.method == "fp"} == {"e2e_asr"}  # the end-to-end rows' reference
    e2e = [r for r in ptq if r.task == "e2e_asr"]  # calibrated on read sentences, not on the digits
    assert {r.data for r in e2e} == {"unseen", "read"} and {r.model_data for r in e2e} == {"sentences"}
    # every model is scored on the text no calibration or training audio reads
    assert {r.quant.label for r in e2e if r.data == "read"} - {r.quant.label for r in e2e if r.data == "unseen"} == {
        "qat1-s150-g64", "qat2-s150-g64-asym-rot-from-gptq"}  # hidden-state QAT, failed on `read`, not retrained
    assert {r.quant.label for r in e2e if r.seed == 2} == {"gptq3-rot", "gptq3-g64-asym-rot",
                                                           "qat2-s60-g64-asym-rot-from-gptq-dec-scales-p28",
                                                           "qat2-s85-g64-asym-rot-from-gptq-dec-scales-p28",
                                                           "qat2-s85-g64-asym-rot-from-gptq-dec-scales-p28-cos",
                                                           "qat2-s85-g64-asym-rot-from-mixed2.25b-dec-scales-p28",
                                                           "qat2-s120-g64-asym-rot-from-gptq-dec-scales-p28-fixed",
                                                           "qat2-s120-g64-asym-rot-from-mixed2.25b-dec-scales-p28-fixed",
                                                           "qat2-s85-g64-asym-rot-from-gptq-dec-scales-p28-calib-sentences60",
                                                           "qat2-s85-g64-asym-rot-from-mixed2.25b-dec-scales-p28-calib-sentences60"}
    # more unlabelled audio of the same text: QAT's own audio table, the model audio unchanged
    assert {r.quant.calib for r in e2e if r.quant.method == "qat"} == {"all", "sentences60"}
    superb = load_suite("paper-superb")
    from downstream.tasks import TASKS

    assert {r.task for r in superb.runs} == set(TASKS) - {"e2e_asr"}  # SUPERB's ten
    assert {r.upstream for r in superb.runs} == {"hubert_base", "distilhubert", "fbank"}
    assert {r.data for r in superb.runs if r.task == "er"} == {f"iemocap_fold{k}" for k in range(1, 6)}


def test_suite_errors_name_file_and_field(tmp_path, tiny_suite):
    bad = tmp_path / "bad.toml"
    bad.write_text(tiny_suite.read_text().replace('protocol = "reuse"', 'protocol = "magic"'))
    with pytest.raises(SuiteError, match=r"bad.toml: \[\[runs\]\] #2.*'magic'"):
        load_suite(str(bad))
    bad.write_text(tiny_suite.read_text().replace('data = ["chirps"]\nprotocol = "reuse"', 'data = ["nope"]\nprotocol = "reuse"'))
    with pytest.raises(SuiteError, match="'nope' is not defined"):
        load_suite(str(bad))
    with pytest.raises(SuiteError, match="unknown suite"):
        load_suite("no-such-suite")
    with pytest.raises(SuiteError, match="--shard"):
        select([], shard="3/2")


def _bench(*args, cwd):
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_without_losing_or_duplicating(tiny_suite, tmp_path):
    store = tmp_path / "store"
    rows_file = store / "tiny" / "runs.jsonl"
    proc = _bench("run", str(tiny_suite), "--store", str(store), "--no-progress", cwd=Path(__file__).parent.parent)
    deadline = time.time() + 240
    while not _rows(rows_file) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = _rows(rows_file)
    assert 1 <= len(first) < 3, "killed after the first row, before the last"
    done = _bench("run", str(tiny_suite), "--store", str(store), "--no-progress", cwd=Path(__file__).parent.parent)
    out, _ = done.communicate(timeout=300)
    assert done.returncode == 0, out
    rows = _rows(rows_file)
    assert len(rows) == 3 and len({r["config_hash"] for r in rows}) == 3
    assert rows[: len(first)] == first  # finished rows are never rewritten
    assert f"{len(first)} already in the store" in out
    again = _bench("run", str(tiny_suite), "--store", str(store), "--no-progress", cwd=Path(__file__).parent.parent)
    out, _ = again.communicate(timeout=300)
    assert "0 finished, 3 already in the store" in out and len(_rows(rows_file)) == 3
    row = rows[0]
    for key in ("config_hash", "spec", "seed", "git_commit", "package_version", "torch", "device", "wall_seconds", "storage_mb",
                "stored_mb", "est_runtime", "metrics", "featurizer_weights"):
        assert key in row, key
    table = (store / "tiny" / "table.md").read_text()
    assert "fbank/fp/retrain" in table and "fbank/fp/reuse" in table and "chirps_wer" in table
    assert (store / "tiny" / "plots" / "asr_chirps_vs_storage.png").is_file()


def test_a_calibration_group_that_is_no_table_gender_or_speaker_is_refused(tmp_path):
    from pathlib import Path

    text = (Path(__file__).parents[1] / "bench/suites/mini-personal.toml").read_text()
    bad = tmp_path / "personal.toml"
    bad.write_text(text.replace("calib=digits_espeak", "calib=digits_espeek", 1))
    with pytest.raises(SuiteError, match=r"calib='digits_espeek' is neither all, F, M, a speaker id nor a data table"):
        load_suite(str(bad))


def test_qat_calib_reads_another_tables_training_audio(tmp_path):
    """``qat:...:calib=TABLE``: the model is trained on that table's training split (more or
    other unlabelled audio than the run's data), a model of its own; a table the suite lacks is
    refused when the suite loads."""
    import shutil

    from bench.runner import Runner

    corpus = tiny_corpus(tmp_path)
    more = tmp_path / "more"
    shutil.copytree(corpus, more)
    for i, f in enumerate(sorted((more / "train" / "1" / "1").glob("*.flac"))):
        f.rename(f.with_name(f"1-1-{i + 10:04d}.flac"))
    trans = more / "train" / "1" / "1" / "1-1.trans.txt"
    trans.write_text("".join(f"1-1-{i + 10:04d} {w}\n" for i, w in enumerate(("GO", "STOP", "UP"))))
    text = tiny_suite_toml(str(corpus), """
[[runs]]
upstreams = ["whisper_tiny_en"]
quant = ["qat:2:s1", "qat:2:s1:calib=more"]
data = ["chirps"]
""") + f'\n[data.more]\nlayout = "librispeech"\nroot = "{more}"\ntrain = ["train"]\n'
    path = tmp_path / "s.toml"
    path.write_text(text)
    suite = load_suite(str(path))
    runner = Runner(suite, tmp_path / "store", progress=False)
    plain, other = suite.runs
    assert other.quant.label == "qat2-s1-calib-more" and runner.model_key(plain) != runner.model_key(other)
    assert [Path(f).parent.parents[2].name for f in runner.unlabelled_files(other, None, other.quant.calib)] == ["more"] * 3
    assert [Path(f).parent.parents[2].name for f in runner.unlabelled_files(plain, None)] == ["corpus"] * 3
    path.write_text(text.replace("calib=more", "calib=mroe"))
    with pytest.raises(SuiteError, match=r"calib='mroe' is neither all, F, M, a speaker id nor a data table"):
        load_suite(str(path))


def test_model_audio_lets_the_tasks_of_a_suite_share_one_quantized_model(tmp_path):
    from bench.runner import Runner

    def suite(model_audio: str) -> Path:
        path = tmp_path / f"s{len(model_audio)}.toml"
        path.write_text(f'''name = "share"
[data.a]
layout = "librispeech"
root = "{tmp_path}/a"
[data.b]
layout = "fluent_speech_commands"
root = "{tmp_path}/b"
{model_audio}
[schedule.asr]
preset = "mini_asr"
[schedule.ic]
preset = "mini_ic"
[[runs]]
upstreams = ["whisper_tiny_en"]
quant = ["gptq:3", "uniform:4"]
tasks = ["asr"]
data = ["a"]
[[runs]]
upstreams = ["whisper_tiny_en"]
quant = ["gptq:3", "uniform:4"]
tasks = ["ic"]
data = ["b"]
''')
        return path

    for model_audio, shared in (("", False), ('model_audio = "a"', True)):
        s = load_suite(str(suite(model_audio)))
        runner = Runner(s, tmp_path / "store", progress=False)
        keys = {(r.quant.label, r.task): runner.model_key(r) for r in s.runs}
        assert (keys["gptq3", "asr"] == keys["gptq3", "ic"]) is shared  # calibrated on a's audio, or on each task's own
        assert keys["uniform4", "asr"] == keys["uniform4", "ic"]  # rounding uses no audio: one model either way
    bad = suite('model_audio = "c"')
    with pytest.raises(SuiteError, match="model_audio 'c' is not defined"):
        load_suite(str(bad))


def test_a_task_that_pads_to_a_window_is_calibrated_on_padded_audio(tmp_path):
    """Whisper's own decoder (e2e_asr) reads 30 s windows: the runner calibrates its models on the
    same audio padded to 30 s, a different model from the one the digits head's rows calibrate."""
    from bench.runner import Runner
    from upstream_quant.calibration import CalibrationError, pad_to_window

    corpus = tiny_corpus(tmp_path)
    path = tmp_path / "window.toml"
    path.write_text(f'''name = "window"
[data.a]
layout = "librispeech"
root = "{corpus}"
train = ["train"]
dev = ["train"]
test = ["train"]
[schedule.asr]
preset = "mini_asr"
[schedule.e2e_asr]
preset = "e2e_asr"
[[runs]]
upstreams = ["whisper_tiny_en"]
quant = ["gptq:3", "uniform:4"]
tasks = ["asr", "e2e_asr"]
data = ["a"]
''')
    s = load_suite(str(path))
    runner = Runner(s, tmp_path / "store", device="cpu", progress=False)
    runs = {(r.quant.label, r.task): r for r in s.runs}
    keys = {k: runner.model_key(r) for k, r in runs.items()}
    assert keys["gptq3", "asr"] != keys["gptq3", "e2e_asr"]  # calibrated on other inputs: another model
    assert keys["uniform4", "asr"] == keys["uniform4", "e2e_asr"]  # no audio used: one model
    head = runner.calibration(runs["gptq3", "asr"])
    decoder = runner.calibration(runs["gptq3", "e2e_asr"])
    assert [w.shape[0] for w in head] == [12000] * 3 and [w.shape[0] for w in decoder] == [480000] * 3
    assert all(torch.equal(d[:12000], h) and not d[12000:].any() for d, h in zip(decoder, head))
    with pytest.raises(CalibrationError, match=r"utterance\(s\) \[1\] are longer than the model's input window of 8000"):
        pad_to_window([torch.zeros(100), torch.zeros(9000)], 8000)


def test_a_mixed_row_to_an_average_width_builds_and_records_its_time(tmp_path):
    """mixed:2.5b:gptq:rot through the runner: allocated to 2.5 bits a weight on average over
    Whisper's transformer linears, GPTQ-rounded and rotated, its quantize_seconds recorded."""
    from bench.runner import Runner
    from upstream_quant.qweight import QuantizedLayer

    corpus = tiny_corpus(tmp_path)
    path = tmp_path / "mixed.toml"
    path.write_text(tiny_suite_toml(str(corpus), """
[[runs]]
upstreams = ["whisper_tiny_en"]
quant = ["mixed:2.5b:gptq:rot"]
data = ["chirps"]
"""))
    s = load_suite(str(path))
    model, info = Runner(s, tmp_path / "store", device="cpu", progress=False)._build_quantized(s.runs[0])
    assert info["quantize_seconds"] > 0 and 2.25 < info["mixed"]["average_bits"] <= 2.5
    layers = [m for m in model.modules() if isinstance(m, QuantizedLayer)]
    assert len(layers) == 24 and {m.bits for m in layers} == {2, 3} and all(m.rotation is not None for m in layers)

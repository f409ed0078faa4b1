"""Training curves (upstream_quant.curves) and each run's log (bench.runlog): a tiny suite run
with the default logger leaves TensorBoard events whose dev metric equals the row's dev curve."""

import json
import logging
import warnings
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bench.results import load_runs
from bench.runlog import run_log
from bench.runner import run_suite
from bench.suites import load_suite
from conftest import tiny_corpus, tiny_suite_toml
from upstream_quant.curves import LoggerUnavailable, check_logger, log_block_curves, make_logger

RUNS = '[[runs]]\nupstreams = ["fbank"]\nquant = ["fp"]\ndata = ["chirps"]\nprotocol = "retrain"\n'


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _suite(tmp_path, **schedule):
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_suite_toml(str(tiny_corpus(tmp_path)), RUNS, max_steps=12, val_every_epochs=1, **schedule))
    return load_suite(str(path))


def test_default_logger_writes_tensorboard_curves_equal_to_the_rows_dev_curve(tmp_path):
    suite = _suite(tmp_path)
    summary = run_suite(suite, suite.runs, tmp_path / "store", device="cpu", progress=False)
    assert summary["finished"] == 1 and not summary["failed"], summary
    row = load_runs("tiny", tmp_path / "store")[0]
    work = tmp_path / "store" / "tiny" / "work" / row["config_hash"]
    scalars = _scalars(work / "tb")
    dev = scalars["dev_wer"]
    assert [s for s, _ in dev] == [s for s, _ in row["dev_curve"]] and len(dev) == 4  # 12 steps of 3: one a epoch
    assert [v for _, v in dev] == pytest.approx([v for _, v in row["dev_curve"]], rel=1e-5)
    assert scalars["train_loss"] and all(v > 0 for _, v in scalars["train_loss"])
    assert [s for s, _ in scalars["utterances_per_second"]] == [3, 6, 9, 12]
    assert len(scalars["lr-Adam"]) == 4 and all(v > 0 for _, v in scalars["lr-Adam"])
    assert scalars["test_wer"][-1][1] == pytest.approx(row["metrics"]["test_wer"], abs=1e-3)
    # and the run's log: Lightning's lines, kept after success
    log = (work / "run.log").read_text()
    assert "run started" in log and "run finished" in log and "fbank/fp/retrain/asr-chirps/seed0" in log
    # a finished suite's status: every run finished with the metrics its row (and so its table) holds, exit 0
    from bench.status import suite_status

    (status,) = suite_status(suite, tmp_path / "store")
    assert status.state == "finished" and f"test_wer {row['metrics']['test_wer']}" in status.detail


def test_csv_logger_and_none(tmp_path):
    suite = _suite(tmp_path)
    run_suite(suite, suite.runs, tmp_path / "csv", device="cpu", progress=False, logger="csv")
    row = load_runs("tiny", tmp_path / "csv")[0]
    work = tmp_path / "csv" / "tiny" / "work" / row["config_hash"]
    lines = (work / "csv" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    dev = [(int(r.split(",")[header.index("step")]), float(r.split(",")[header.index("dev_wer")]))
           for r in lines[1:] if r.split(",")[header.index("dev_wer")]]
    assert dev == [(s, pytest.approx(v, rel=1e-5)) for s, v in row["dev_curve"]]
    assert not (work / "tb").exists()
    run_suite(suite, suite.runs, tmp_path / "none", device="cpu", progress=False, logger="none")
    row = load_runs("tiny", tmp_path / "none")[0]
    work = tmp_path / "none" / "tiny" / "work" / row["config_hash"]
    assert not (work / "tb").exists() and not (work / "csv").exists() and (work / "run.log").is_file()


def test_mlflow_logs_to_a_local_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")  # in the dev extra: installed in CI
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logger = make_logger("mlflow", tmp_path / "work", name="r1")
    logger.log_metrics({"dev_wer": 12.5}, step=3)
    logger.finalize("success")
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "work" / "mlruns").resolve().as_uri())
    history = client.get_metric_history(logger.run_id, "dev_wer")
    assert [(m.step, m.value) for m in history] == [(3, 12.5)]


def test_wandb_runs_offline_in_the_work_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # in the dev extra: installed in CI
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = make_logger("wandb", tmp_path / "work", name="r1")
    logger.log_metrics({"dev_wer": 12.5}, step=3)
    logger.experiment.finish()
    runs = list((tmp_path / "work" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_bad_logger_is_refused_naming_the_choices_and_the_extra(monkeypatch):
    with pytest.raises(ValueError, match="choose one of tensorboard, csv, wandb, mlflow, none"):
        check_logger("visdom")
    import builtins

    real = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(LoggerUnavailable, match=r"pip install -e '.\[wandb\]'"):
        check_logger("wandb")


def test_recon_block_curves(tmp_path):
    reports = [{"block": "layers.0", "gptq_error": 0.5, "recon_error": 0.2, "kept": True,
                "loss_curve": [(0, 1.0), (10, 0.5), (19, 0.25)]},
               {"block": "layers.1", "gptq_error": 0.4, "recon_error": 0.3, "kept": True, "loss_curve": [(0, 2.0), (19, 1.0)]}]
    log_block_curves(None, tmp_path, reports)
    scalars = _scalars(tmp_path / "tb")
    assert scalars["recon/layers.0"] == [(0, 1.0), (10, 0.5), (19, 0.25)]
    assert scalars["recon/layers.1"] == [(0, 2.0), (19, 1.0)]
    assert scalars["blocks/recon_error"] == [(0, pytest.approx(0.2)), (1, pytest.approx(0.3))]


def test_run_log_keeps_warnings_and_the_traceback_and_restores_logging(tmp_path):
    path = tmp_path / "w" / "run.log"
    lightning = logging.getLogger("lightning.pytorch")
    before = list(lightning.handlers)
    with pytest.raises(RuntimeError):
        with run_log(path, header="r1"):
            warnings.warn("a warning the progress bar would hide", UserWarning)
            lightning.info("GPU available: False")
            raise RuntimeError("boom")
    text = path.read_text()
    assert "a warning the progress bar would hide" in text and "GPU available: False" in text
    assert "Traceback" in text and "RuntimeError: boom" in text
    assert lightning.handlers == before
    assert not any(getattr(h, "baseFilename", None) == str(path) for h in logging.getLogger().handlers)
    json.dumps(text)  # plain text


def test_run_log_keeps_our_lines_off_the_terminal_even_with_a_root_stream_handler(tmp_path, capsys):
    """A library that called logging.basicConfig() puts a stream handler on the root logger: our
    run's messages and Lightning's must still go to the file only."""
    import sys

    stream = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(stream)
    try:
        with run_log(tmp_path / "run.log", header="r2"):
            logging.getLogger("lightning.pytorch").info("GPU available: False")
            warnings.warn("hidden warning", UserWarning)
    finally:
        root.removeHandler(stream)
    err = capsys.readouterr().err
    assert "run started" not in err and "GPU available" not in err and "hidden warning" not in err
    text = (tmp_path / "run.log").read_text()
    assert "run started" in text and "GPU available" in text and "hidden warning" in text

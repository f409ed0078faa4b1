import json

import pytest

from bench.cli import main


def test_bench_cost_json(capsys):
    assert main(["cost", "--upstream", "hubert_base", "--bits", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters_total"] == 94_697_600
    assert set(data["storage_mb"]) == {"fp16", "paper", "stored"}
    assert data["est_runtime"]["encoder"] == pytest.approx(0.154, abs=0.002)


def test_bench_cost_text_and_unknown_upstream(capsys):
    assert main(["cost", "--upstream", "distilhubert"]) == 0
    assert "transformer/weight" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="known: distilhubert, hubert_base"):
        main(["cost", "--upstream", "wav2vec3"])


def test_bench_table_paper_writes_files_and_fills_wer_from_results(tmp_path, capsys):
    runs = tmp_path / "paper" / "runs.jsonl"
    runs.parent.mkdir(parents=True)
    runs.write_text(
        json.dumps({"config": "hubert_base/2bit", "metrics": {"wer": 12.0}}) + "\n"
        + json.dumps({"config": "hubert_base/2bit", "metrics": {"wer": 14.0}}) + "\n"
        + '{"config": "hubert_base/1bit", "metr'  # torn last line from an interrupted writer
    )
    with pytest.warns(UserWarning, match="unreadable row"):
        assert main(["table", "paper", "--results", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["config"] for r in rows] == [
        "hubert_base/fp16", "hubert_base/8bit", "hubert_base/4bit", "hubert_base/2bit", "hubert_base/1bit", "distilhubert/fp16",
    ]
    keys = {"config", "storage_mb", "est_runtime", "wer", "paper_storage_mb", "paper_est_runtime", "paper_wer"}
    assert all(keys <= set(r) for r in rows)
    by = {r["config"]: r for r in rows}
    assert by["hubert_base/2bit"]["wer"] == 13.0 and by["hubert_base/1bit"]["wer"] is None
    assert by["hubert_base/1bit"]["paper_wer"] == 15.96 and by["hubert_base/8bit"]["paper_wer"] is None
    md = (tmp_path / "paper" / "table.md").read_text()
    assert "paper_storage_mb" in md and "nan" not in md
    assert (tmp_path / "paper" / "table.csv").read_text().startswith("config,storage_mb")


def test_reference_file_is_labelled_as_the_papers():
    from bench.reference import paper_reference

    ref = paper_reference()
    assert list(ref.columns) == ["paper_storage_mb", "paper_est_runtime", "paper_wer", "paper_source"]
    assert ref.loc["hubert_base/1bit", "paper_storage_mb"] == 25.23

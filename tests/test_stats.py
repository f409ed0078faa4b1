"""Uncertainty: per-utterance scores, bootstrap intervals, paired differences, seeds, tables,
portable rows and `bench compare`."""

import json
from pathlib import Path

import jiwer
import numpy as np
import pytest

from bench.stats import Scores, check_resamples, interval, paired
from bench.suites import SuiteError, load_suite
from conftest import tiny_corpus, tiny_suite_toml


def _scores(errors_per_utt: list[int], words: int = 8, seeds=(0,)) -> Scores:
    n = len(errors_per_utt)
    num = np.array([errors_per_utt] * len(seeds), dtype=float)
    return Scores(tuple(seeds), tuple(f"u{i:03d}" for i in range(n)), num, np.full((len(seeds), n), words, dtype=float))


def _spread(total_errors: int, n: int = 22, start: int = 0) -> list[int]:
    """`total_errors` single-word errors on distinct utterances, from `start` on."""
    out = [0] * n
    for i in range(total_errors):
        out[(start + i) % n] += 1
    return out


def test_one_word_apart_in_176_is_not_significant_and_twenty_points_apart_is():
    base = _scores(_spread(4))  # 22 utterances x 8 words = 176 words, 4 errors: 2.27 %
    one_more = _scores(_spread(5))  # the same errors plus one: 2.84 %
    d = paired(one_more, base)
    assert d.value == pytest.approx(100 / 176) and d.low <= 0 <= d.high and not d.significant
    far = _scores(_spread(4 + 35, start=0))  # about 20 points worse
    d = paired(far, base)
    assert d.value == pytest.approx(100 * 35 / 176) and d.significant and d.low > 5
    ci = interval(base)
    assert ci.value == pytest.approx(100 * 4 / 176) and 0 <= ci.low < ci.value < ci.high
    assert interval(base) == ci  # seeded: the same store gives the same table


def test_seeds_widen_the_interval_and_shared_seeds_pair():
    one = _scores(_spread(10, n=200), seeds=(0,))
    rng = np.random.default_rng(1)
    noisy = Scores((0, 1, 2), one.ids, np.stack([one.num[0], rng.integers(0, 3, 200), rng.integers(0, 2, 200)]).astype(float),
                   np.repeat(one.den, 3, axis=0))
    assert interval(noisy).high - interval(noisy).low > interval(one).high - interval(one).low
    d = paired(noisy, noisy)  # the same seeds and utterances drawn for both: exactly 0
    assert d.value == 0 and d.low == 0 and d.high == 0


def test_per_utterance_scores_recompute_the_corpus_metrics_exactly():
    from downstream import metrics
    from downstream.tasks.asr import ASRTask
    from downstream.tasks.ic import ICTask

    pairs = [("one two three", "one too three four"), ("seven", ""), ("nine eight", "nine eight"), ("a b c d", "a c d")]
    units = ASRTask.unit_scores(pairs)
    refs, hyps = zip(*pairs)
    assert metrics.ratio(units["wer"]) == pytest.approx(100 * jiwer.wer(list(refs), list(hyps)), abs=1e-12)
    assert metrics.ratio(units["cer"]) == pytest.approx(100 * jiwer.cer(list(refs), list(hyps)), abs=1e-12)
    assert units["wer"] == [(2, 3), (1, 1), (0, 2), (1, 4)]
    ic = ICTask.unit_scores([("a|b|c", "a|b|c"), ("a|b|c", "a|x|c")])
    assert ic["acc"] == [(1, 1), (0, 1)] and ic["object_acc"] == [(1, 1), (0, 1)] and ic["action_acc"] == [(1, 1), (1, 1)]


def test_bad_seeds_and_resample_counts_are_refused_naming_the_field(tmp_path):
    root = tiny_corpus(tmp_path)
    for seeds, message in (("[]", "'seeds' is empty"), ("[0, -1]", "'seeds' holds -1"), ("[1, 1, 2]", r"'seeds' repeats \[1\]"),
                           ('["a"]', "'seeds' holds 'a'")):
        path = tmp_path / "s.toml"
        path.write_text(tiny_suite_toml(str(root), f'[[runs]]\nupstreams = ["fbank"]\ndata = ["chirps"]\nseeds = {seeds}\n'))
        with pytest.raises(SuiteError, match=rf"s.toml: \[\[runs\]\] #1: field {message}"):
            load_suite(str(path))
    for bad in (99, 0, -5, True):
        with pytest.raises(ValueError, match="--bootstrap"):
            check_resamples(bad)
    assert check_resamples(100) == 100
    from bench.cli import main

    assert main(["table", "mini", "--store", "results", "--bootstrap", "50"]) == 2


SEEDED = """
[[runs]]
upstreams = ["fbank"]
quant = ["fp"]
data = ["chirps"]
protocol = "retrain"
seeds = [0, 1, 2]

[[runs]]
upstreams = ["fbank"]
quant = ["fp"]
data = ["chirps"]
protocol = "reuse"
seeds = [0, 1, 2]
"""


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory):
    from bench.runner import run_suite

    tmp = tmp_path_factory.mktemp("seeded")
    path = tmp / "tiny.toml"
    path.write_text('student = "fbank"\n' + tiny_suite_toml(str(tiny_corpus(tmp)), SEEDED, max_steps=20))
    suite = load_suite(str(path))
    summary = run_suite(suite, suite.runs, tmp / "store", device="cpu", progress=False)
    assert not summary["failed"], summary["failed"]
    return suite, tmp / "store"


@pytest.mark.slow
def test_three_seeds_give_three_rows_one_table_line_with_intervals(seeded_store):
    from bench.tables import markdown, suite_table

    suite, store = seeded_store
    rows = [json.loads(x) for x in (store / "tiny" / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and sorted(r["seed"] for r in rows if r["protocol"] == "retrain") == [0, 1, 2]
    # the seeds' heads train on one feature pass: seeds 1 and 2 find every utterance in the cache
    caches = [r["train"]["feature_cache"] for r in sorted(rows, key=lambda r: r["seed"]) if r["protocol"] == "retrain"]
    assert caches[0]["misses"] > 0 and all(c["misses"] == 0 and c["hits"] > 0 for c in caches[1:])
    for row in rows:  # the stored metric is exactly what the utterances' scores sum to
        per = row["per_utterance"]
        assert len(per["ids"]) == 3 and set(per["scores"]) == {"wer", "cer"}
        for metric, units in per["scores"].items():
            num, den = (sum(u[i] for u in units) for i in (0, 1))
            assert round(100 * num / den, 3) == row["metrics"][f"test_{metric}"]
    table = suite_table("tiny", store, suite.student).set_index("config")
    assert list(table.index) == ["fbank/fp/retrain", "fbank/fp/reuse"] and (table["chirps_seeds"] == 3).all()
    for config in table.index:
        assert table.loc[config, "chirps_wer_lo"] <= table.loc[config, "chirps_wer"] <= table.loc[config, "chirps_wer_hi"]
    assert "chirps_wer_vs_fp" in table and np.isnan(table.loc["fbank/fp/retrain", "chirps_wer_vs_fp"])
    md = markdown(suite_table("tiny", store, suite.student))
    assert " ± " in md and "[" in md and "n/a" not in md


@pytest.mark.slow
def test_rows_are_portable_and_old_rows_say_rerun(seeded_store, tmp_path):
    from bench.tables import markdown, suite_table

    _, store = seeded_store
    text = (store / "tiny" / "runs.jsonl").read_text()
    rows = [json.loads(x) for x in text.splitlines()]

    def strings(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value

    absolute = [s for r in rows for s in strings(r) if s.startswith("/") or str(tmp_path.parent) in s]
    assert not absolute, absolute[:5]
    from bench.runner import portable_path

    packed = store / "tiny" / "work" / "models" / "m.safetensors"
    packed.parent.mkdir(parents=True, exist_ok=True)
    packed.touch()
    assert portable_path(packed, store) == "tiny/work/models/m.safetensors"  # a work file: relative to the store
    assert portable_path(Path(jiwer.__file__)) == "jiwer/__init__.py"  # an installed package's file
    assert portable_path("/somewhere/else/ckpt.pt") == "ckpt.pt" and portable_path("random-init") == "random-init"
    old = tmp_path / "old"
    (old / "tiny").mkdir(parents=True)
    (old / "tiny" / "runs.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "per_utterance"}) + "\n"
                                                     for r in rows))
    md = markdown(suite_table("tiny", old))
    assert "n/a (rerun)" in md


@pytest.mark.slow
def test_bench_compare_says_cell_by_cell_whether_two_stores_agree(seeded_store, tmp_path, capsys):
    from bench.cli import main

    _, store = seeded_store
    assert main(["compare", str(store), str(store), "--suite", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "4 cells; 4 identical" in out
    rows = [json.loads(x) for x in (store / "tiny" / "runs.jsonl").read_text().splitlines()]
    other = tmp_path / "other"
    (other / "tiny").mkdir(parents=True)
    for row in rows:  # another "machine" whose fp rows score the opposite of these on every utterance
        if row["protocol"] == "retrain":
            for metric, units in row["per_utterance"]["scores"].items():
                wrong = row["metrics"][f"test_{metric}"] < 50
                row["per_utterance"]["scores"][metric] = [[d if wrong else 0, d] for _, d in units]
                row["metrics"][f"test_{metric}"] = 100.0 if wrong else 0.0
    (other / "tiny" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["compare", str(store), str(other), "--suite", "tiny"]) == 1
    out = capsys.readouterr().out
    assert "DIFFERS" in out and "2 differ beyond them" in out


def test_the_pareto_front_counts_only_significant_dominance():
    import pandas as pd

    from bench.plots import pareto, significantly_lower

    scores = {"cheap": _scores(_spread(20, n=50)), "dear": _scores(_spread(21, n=50)),  # one word apart: noise
              "bad": _scores(_spread(45, n=50))}
    points = pd.DataFrame({"config": list(scores), "storage": [1.0, 3.0, 2.0],
                           "value": [s.per_seed.mean() for s in scores.values()]})
    assert list(pareto(points, "storage", "value").config) == ["cheap"]  # by the means alone
    front = pareto(points, "storage", "value", significantly_lower(scores, points))
    assert list(front.config) == ["cheap", "dear"]  # "bad" is significantly worse than "cheap"; "dear" is not
    # rows without per-utterance scores: dominance by the means, as before intervals existed
    assert list(pareto(points, "storage", "value", significantly_lower({}, points)).config) == ["cheap"]


def test_utterances_reading_the_same_text_are_one_draw():
    """Five readings of each of 20 phrasings are 20 draws, not 100: the interval is wider than
    if the readings were independent."""
    errors = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0] * 2  # phrasing k: all five readings right, or all wrong
    num = np.repeat(np.array(errors, dtype=float), 5)[None]
    ids = tuple(f"u{i:03d}" for i in range(100))
    flat = Scores((0,), ids, num, np.ones_like(num))
    grouped = Scores((0,), ids, num, np.ones_like(num), tuple(f"phrase{i // 5}" for i in range(100)))
    wide, narrow = interval(grouped), interval(flat)
    assert wide.value == narrow.value == 50 and wide.high - wide.low > 1.5 * (narrow.high - narrow.low)


@pytest.mark.slow
def test_the_full_precision_head_is_trained_and_tested_once_for_all_reuse_rows(seeded_store, monkeypatch):
    """Reuse rows of several seeds and models ask for their fp head; it is trained and tested once
    per seed in an invocation (each call tests it over the whole test set)."""
    import downstream.train
    from bench.runner import run_suite

    suite, store = seeded_store
    calls = []
    real = downstream.train.train_and_evaluate
    monkeypatch.setattr(downstream.train, "train_and_evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    reuse = [r for r in suite.runs if r.protocol == "reuse"]
    summary = run_suite(suite, reuse + reuse, store, force=True, device="cpu", progress=False)
    assert not summary["failed"] and summary["finished"] == 6 and len(calls) == 3  # one per seed, not per row
    # after the retrain rows in the same invocation, the reuse rows use their results: no call more
    calls.clear()
    summary = run_suite(suite, suite.runs, store, force=True, device="cpu", progress=False)
    assert not summary["failed"] and summary["finished"] == 6 and len(calls) == 3  # the retrain rows' own

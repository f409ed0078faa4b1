"""QbE: the QUESST 2014 reader on a fixture in its layout, MTWV against hand-computed values, and
DTW detection of tone "words" on FBANK features (nothing trained)."""

import numpy as np
import pytest
import soundfile as sf

from downstream import metrics
from downstream.datamodule import DataConfig
from downstream.quesst14 import load_quesst14
from downstream.tasks import preset
from downstream.tasks.qbe import detection_scores
from downstream.train import train_and_evaluate
from upstream_quant.loading import load_upstream

WORDS = {"a": (300, 900), "b": (1200, 500), "c": (700, 700), "d": (400, 1500), "e": (1600, 1000)}  # start and end pitch


def _word(name: str, shift: float, rng) -> np.ndarray:
    f0, f1 = WORDS[name]
    n = 4800  # 0.3 s
    f = np.linspace(f0, f1, n) * shift
    wav = np.sin(2 * np.pi * np.cumsum(f) / 16000) * np.hanning(n)
    return (0.3 * wav + 0.003 * rng.standard_normal(n)).astype(np.float32)


def write_quesst(root, seed: int = 0):
    """8 search utterances of three words each; queries a, b (dev) and c, d (eval) by another
    "speaker" (pitch shifted 6 %); e occurs but is never asked."""
    rng = np.random.default_rng(seed)
    docs = ["abe", "bce", "cda", "dea", "eab", "ace", "bde", "ced"]
    for sub in ("Audio", "dev_queries", "eval_queries", "scoring/groundtruth_quesst14_dev", "scoring/groundtruth_quesst14_eval"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, words in enumerate(docs):
        gap = np.zeros(1600, dtype=np.float32)
        sf.write(root / "Audio" / f"quesst14_{i:05d}.wav", np.concatenate([gap] + [x for w in words for x in (_word(w, 1.0, rng), gap)]), 16000)
    queries = {"dev": "ab", "eval": "cd"}
    lines = {"utterances": [f"quesst14Database/Audio/quesst14_{i:05d}.wav nnenglish" for i in range(len(docs))]}
    lines["utterances"].append("quesst14Database/Audio/quesst14_99999.wav nnczech")  # another language: not read
    for split, words in queries.items():
        rttm = []
        lines[split] = []
        for k, w in enumerate(words):
            q = f"quesst14_{split}_{k:04d}"
            sf.write(root / f"{split}_queries" / f"{q}.wav", _word(w, 1.06, rng), 16000)
            lines[split].append(f"quesst14Database/{split}_queries/{q}.wav nnenglish")
            rttm += [f"LEXEME quesst14_{i:05d} 1 0.10 0.30 {q} lex <NA> <NA>" for i, d in enumerate(docs) if w in d]
        (root / "scoring" / f"groundtruth_quesst14_{split}" / f"quesst14_{split}.rttm").write_text("\n".join(rttm) + "\n")
    for kind, name in (("utterances", "utterances"), ("dev", "dev"), ("eval", "eval")):
        (root / "scoring" / f"language_key_{name}.lst").write_text("\n".join(lines[kind]) + "\n")
    return root


@pytest.fixture(scope="module")
def quesst(tmp_path_factory):
    return write_quesst(tmp_path_factory.mktemp("quesst") / "quesst14Database")


def test_reader_gives_search_utterances_queries_and_true_detections(quesst, tmp_path):
    dev = load_quesst14(quesst, ["dev"])
    assert sorted({u.split for u in dev.utterances}) == ["dev", "doc"] and len(dev) == 8 + 2
    # a occurs in 5 of the utterances, b in 4
    assert len(dev.trials) == 9 and dev.trials[0] == (1, "quesst14_dev_0000", "quesst14_00000")
    assert len(load_quesst14(quesst, ["eval"])) == 8 + 4
    with pytest.raises(ValueError, match="split must be one of"):
        load_quesst14(quesst, ["test"])
    with pytest.raises(FileNotFoundError, match="language_key_utterances.lst not found"):
        load_quesst14(tmp_path, ["dev"])


def test_mtwv_on_known_detection_lists():
    one = lambda s, t, g, beta=metrics.BETA: metrics.mtwv(np.array(s), np.array(t), np.ones((1, len(s))), np.array(g), beta)[0]  # noqa: E731
    # each term's true utterances score above its others: every term found, no false alarm
    assert one([0.9, 0.5, 0.1, 0.8, 0.7, 0.2], [1, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]) == pytest.approx(1.0)
    # one term: .9 true, .6 false, .5 true. beta 1: accepting .9 only gives 1 - (1/2 + 0) = 0.5; going down to .5
    # finds both but one false alarm in one non-target: 1 - (0 + 1) = 0
    assert one([0.9, 0.6, 0.5], [1, 0, 1], [0, 0, 0], beta=1.0) == pytest.approx(0.5)
    # with NIST's beta a false alarm costs far more than a miss; the best threshold stays above .6
    assert one([0.9, 0.6, 0.5], [1, 0, 1], [0, 0, 0]) == pytest.approx(0.5)
    # a term that never occurs is left out; nothing above the threshold scores TWV 0, never below
    assert one([0.9, 0.1], [0, 0], [0, 0]) == 0.0
    # two terms, the second found at no threshold without a false alarm: its miss rate halves the value
    assert one([0.9, 0.1, 0.2, 0.8], [1, 0, 1, 0], [0, 0, 1, 1]) == pytest.approx(0.5)


def test_map_on_known_detection_lists():
    ap = lambda s, t, g, w=None: metrics.mean_average_precision(  # noqa: E731
        np.array(s), np.array(t), np.ones((1, len(s))) if w is None else np.array([w], float), np.array(g))[0]
    # term 0 ranks true, false, true: AP (1/1 + 2/3) / 2 = 5/6; term 1 false then true: 1/2; term 2 never occurs
    scores, targets, terms = [0.9, 0.8, 0.7, 0.5, 0.4, 0.3], [1, 0, 1, 0, 1, 0], [0, 0, 0, 1, 1, 2]
    assert ap(scores, targets, terms) == pytest.approx((5 / 6 + 1 / 2) / 2)
    # a replicate that draws term 0 twice and term 1 once
    assert ap(scores, targets, terms, [2, 2, 2, 1, 1, 0]) == pytest.approx((2 * 5 / 6 + 1 / 2) / 3)
    # the order within a term is by score, not by position
    assert ap([0.1, 0.9], [1, 0], [0, 0]) == pytest.approx(1 / 2) and ap([0.9, 0.1], [1, 0], [0, 0]) == 1.0


def test_dtw_detects_the_query_words_and_the_layer_is_chosen_on_dev(quesst, tmp_path):
    data = DataConfig("quesst14", str(quesst), train=("dev",), dev=("dev",), test=("eval",))
    result = train_and_evaluate(load_upstream("fbank", device="cpu"), preset("superb_qbe"), data, tmp_path / "qbe",
                                device="cpu", progress=False)
    m = result["metrics"]
    assert m["test_mtwv"] > 0.5 and m["test_map"] > 0.8 and m["test_layer"] == 0.0  # FBANK has one state
    per = result["per_utterance"]
    assert len(per["ids"]) == 2 * 8 and set(per["refs"]) == {"quesst14_eval_0000", "quesst14_eval_0001"}
    short = detection_scores({"q": np.ones((4, 3))}, {"d1": np.ones((9, 3)), "d2": np.zeros((9, 3))})
    assert short == {("q", "d1"): 0.0, ("q", "d2"): 0.0}  # under 5 frames: scored 0 everywhere, as s3prl


def test_our_subsequence_dtw_is_dtw_pythons_asymmetric_open_ended_one():
    import contextlib
    import io

    from downstream.tasks.qbe import subsequence_dtw

    with contextlib.redirect_stdout(io.StringIO()):  # dtw-python prints a citation notice on import
        from dtw import dtw
    rng = np.random.default_rng(0)
    for n, m in ((1, 4), (3, 3), (5, 20), (40, 225)):
        dist = rng.random((n, m))
        ref = dtw(dist, step_pattern="asymmetric", keep_internals=False, distance_only=False, open_begin=True,
                  open_end=True).normalizedDistance
        assert subsequence_dtw(dist) == pytest.approx(ref, rel=1e-12)


def test_the_cosine_distance_is_scipys():
    from scipy.spatial import distance

    from downstream.tasks.qbe import _unit_rows

    rng = np.random.default_rng(1)
    q, d = rng.standard_normal((7, 5)), rng.standard_normal((11, 5))
    assert np.allclose(1 - _unit_rows(q) @ _unit_rows(d).T, distance.cdist(q, d, "cosine"))


def test_many_utterances_at_once_give_each_pair_s_cost():
    from scipy.spatial import distance

    from downstream.tasks.qbe import batch_costs, subsequence_dtw

    rng = np.random.default_rng(2)
    query = rng.standard_normal((6, 4))
    docs = [rng.standard_normal((m, 4)) for m in (3, 9, 20, 7)]
    one_by_one = []
    for doc in docs:
        dist = np.exp(distance.cdist(query, doc, "cosine")) - 1
        low, high = dist.min(1, keepdims=True), dist.max(1, keepdims=True)
        one_by_one.append(subsequence_dtw((dist - low) / (high - low)))
    assert np.allclose(batch_costs(query, docs), one_by_one)

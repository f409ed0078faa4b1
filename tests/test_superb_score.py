"""The SUPERB score: each task scaled between FBANK (0) and the best result (1000), averaged over
the tasks a row has, with measured or published anchors."""

import pandas as pd
import pytest

from bench import superb_score
from bench.superb_score import superb_scores


def _runs(rows):
    return pd.DataFrame([{"config": c, "task": t, "data": d, "layout": lay, f"test_{m}": v}
                         for c, t, d, lay, m, v in rows])


def test_scores_scale_each_task_between_fbank_and_the_best_and_average_them():
    runs = _runs([
        ("fbank/fp/retrain", "asr", "digits", "librispeech", "wer", 40.0),
        ("big/fp/retrain", "asr", "digits", "librispeech", "wer", 10.0),
        ("big/gptq2/reuse", "asr", "digits", "librispeech", "wer", 25.0),
        ("fbank/fp/retrain", "sid", "spk", "voxceleb1", "acc", 20.0),
        ("big/fp/retrain", "sid", "spk", "voxceleb1", "acc", 60.0),
        ("big/fp/retrain", "sid", "spk", "voxceleb1", "acc", 80.0),  # a second seed: the mean, 70, counts
        ("big/gptq2/reuse", "sid", "spk", "voxceleb1", "acc", 45.0),
        ("big/gptq2/reuse", "ks", "kw", "speech_commands", "acc", 90.0),  # no fbank row: no anchors, not scored
    ])
    s = superb_scores(runs)
    assert s.loc["fbank/fp/retrain", "superb_score"] == 0.0 and s.loc["big/fp/retrain", "superb_score"] == 1000.0
    # asr: (25 - 40) / (10 - 40) = 0.5; sid: (45 - 20) / (70 - 20) = 0.5
    assert s.loc["big/gptq2/reuse", "superb_score"] == 500.0
    assert s.loc["big/gptq2/reuse", "superb_tasks"] == "asr (measured), sid (measured)"


def test_published_anchors_win_and_a_task_over_several_folds_is_averaged_first(monkeypatch):
    published = pd.DataFrame([{"task": "er", "layout": "iemocap", "metric": "acc", "fbank": 35.0, "sota": 75.0,
                               "source": "a paper"}]).set_index(["task", "layout"])
    monkeypatch.setattr(superb_score, "published_anchors", lambda: published)
    runs = _runs([("m/fp/retrain", "er", "fold1", "iemocap", "acc", 55.0),
                  ("m/fp/retrain", "er", "fold2", "iemocap", "acc", 75.0),
                  ("fbank/fp/retrain", "asr", "digits", "librispeech", "wer", 40.0),
                  ("m/fp/retrain", "asr", "digits", "librispeech", "wer", 40.0),
                  ("n/fp/retrain", "asr", "digits", "librispeech", "wer", 20.0)])
    s = superb_scores(runs)
    # er: folds 500 and 1000 -> 750; asr: m is fbank's equal -> 0; their mean 375
    assert s.loc["m/fp/retrain", "superb_score"] == 375.0
    assert s.loc["m/fp/retrain", "superb_tasks"] == "er (published), asr (measured)"


def test_the_shipped_anchor_file_parses_and_every_row_cites_its_source():
    anchors = superb_score.published_anchors()
    assert list(anchors.columns) == ["metric", "fbank", "sota", "source"]
    assert anchors["source"].notna().all()
    with pytest.raises(KeyError):
        anchors.loc[("nosuch", "layout")]

"""The resume promise under fire: `bench run` of a tiny suite (a head trained on the real Whisper
tiny.en encoder, then a 4-bit model written as a packed file and evaluated with that head)
killed with SIGKILL at eight points of its own timeline, in one chain (each kill lands in the
process that resumed the previous one), then run to the end: the store must hold exactly the
rows and packed file an uninterrupted run wrote."""

import json

import numpy as np
import pytest
import soundfile as sf

from bench.chaos import differences, kill_at, plan, run_to_end
from bench.timeline import read_timeline

WORDS = ["GO", "STOP", "UP", "DOWN", "LEFT", "RIGHT", "ON", "OFF"]


def _corpus(root):
    """Eight tones of different lengths (so batches of three differ from epoch to epoch)."""
    d = root / "train" / "1" / "1"
    d.mkdir(parents=True)
    lines = []
    for i, word in enumerate(WORDS):
        t = np.arange(8000 + 1100 * i) / 16000
        sf.write(d / f"1-1-{i:04d}.flac", (0.3 * np.sin(2 * np.pi * (180 + 90 * i) * t)).astype(np.float32), 16000)
        lines.append(f"1-1-{i:04d} {word}\n")
    (d / "1-1.trans.txt").write_text("".join(lines))
    return root


SUITE = """name = "tiny"
[data.tones]
layout = "librispeech"
root = "{root}"
train = ["train"]
dev = ["train"]
test = ["train"]

[schedule.asr]
preset = "mini_asr"
proj = 16
hidden = 16
max_steps = 45
batch_size = 3
val_every_epochs = 2
dropout = 0.1
specaug = true
cache_features = {cache}

[[runs]]
upstreams = ["whisper_tiny_en"]
quant = ["fp"]
data = ["tones"]
protocol = "retrain"

[[runs]]
upstreams = ["whisper_tiny_en"]
quant = ["uniform:4"]
data = ["tones"]
protocol = "reuse"
"""


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["true", "false"])
def test_a_suite_killed_at_eight_points_of_its_timeline_resumes_to_the_uninterrupted_store(tmp_path, cache):
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE.format(root=_corpus(tmp_path / "corpus"), cache=cache))
    reference = tmp_path / "whole"
    run_to_end(suite, reference)
    events = read_timeline(reference / "tiny" / "work" / "timeline.jsonl")
    points = plan(events, 8)
    assert len(points) == 8
    # every phase is aimed at: run start, each kind of training event, packed file, test, row
    assert {p.phase for p in points} >= {"run", "epoch", "checkpoint", "validation", "test", "packed", "row"}
    store = tmp_path / "killed"
    killed = [kill_at(suite, store, "tiny", p) for p in points]
    run_to_end(suite, store)
    # Most points are reached; one can be passed when the kill before it lands late (the watcher
    # polls; epochs here last a tenth of a second) and the resumed process starts beyond it.
    assert sum(killed) >= 5, killed
    assert differences(reference, store, "tiny") == []
    # the rows say what happened: the reference never resumed; the chain resumed from checkpoints
    rows = {s: [json.loads(line) for line in (s / "tiny" / "runs.jsonl").read_text().splitlines()] for s in (reference, store)}
    assert all(not r["resumed"] and r["resumes"] == 0 for r in rows[reference])
    assert sum(r["resumes"] for r in rows[store]) >= 1 and any(r["resumed"] for r in rows[store])


def test_kill_points_cover_every_phase_in_timeline_order_and_name_events_per_process():
    from bench.chaos import event_names

    t, events = 0.0, []
    for pid in (1, 2):  # the second process repeats epoch 1 after a resume
        for name, epoch in [("run", None), ("epoch", 0), ("epoch", 1), ("checkpoint", 1), ("checkpoint", 1),
                            ("validation", 1), ("test", None), ("row", None), ("row_written", None)][pid - 1:]:
            t += 1.0 + (epoch or 0)
            events.append({"t": t, "pid": pid, "run": "r", "event": name, "epoch": epoch})
    names = event_names(events)
    assert names[3] == ("r", "checkpoint", 1, 0) and names[4] == ("r", "checkpoint", 1, 1)
    assert names[9] == names[1] == ("r", "epoch", 0, 0)  # a resumed process names epoch 0 as the first did
    points = plan(events[:9], 8)
    kinds = [p.phase for p in points]
    assert set(kinds) == {"run", "epoch", "checkpoint", "validation", "test", "row"} and len(points) == 8
    starts = [next(e["t"] for e, n in zip(events, names) if n == p.name) for p in points]
    assert starts == sorted(starts) and all(p.delay > 0 for p in points)

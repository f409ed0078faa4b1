import time

import pytest
import torch

from upstream_quant import UpstreamUnavailable, load_upstream, pick_device
from upstream_quant.accounting import inventory_summary, param_inventory
from upstream_quant.checkpoints import CheckpointError
from upstream_quant.upstream import conv_output_lengths


def counts(upstream):
    summary = inventory_summary(param_inventory(upstream))
    total = sum(summary.values())
    heads = sum(n for (g, _), n in summary.items() if g == "heads")
    return summary, total, heads


def test_hubert_base_random_init_has_the_real_parameter_inventory():
    up = load_upstream("hubert_base", random_init=True, device="cpu")
    summary, total, heads = counts(up)
    assert total == 94_697_600  # fairseq/s3prl model with pretraining heads
    assert total - heads == 94_371_712  # the upstream used at inference (= HF HubertModel)
    assert summary[("transformer", "weight")] == 84_934_656  # 12 x (4 x 768^2 + 2 x 768 x 3072)
    assert summary[("cnn", "weight")] == 4_199_424
    assert summary[("positional_conv", "weight")] == 4_718_592
    assert up.num_hidden_states == 13 and up.hidden_size == 768


def test_distilhubert_random_init_inventory():
    up = load_upstream("distilhubert", random_init=True, device="cpu")
    summary, total, heads = counts(up)
    # s3prl's Distiller with the released 4-8-12 config: 23,491,200 without the prediction heads
    # (the DistilHuBERT paper rounds to 23.49M; the figure 23,492,224 has 1,024 more, see docs/upstreams.md).
    assert total - heads == 23_491_200
    assert summary[("transformer", "weight")] == 2 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert up.num_hidden_states == 6


def test_hubert_forward_returns_all_states_with_lengths(tiny_hubert, batch):
    wavs, lens = batch
    with torch.no_grad():
        states, lengths = tiny_hubert(wavs, lens)
    assert len(states) == 3  # transformer input + 2 layers
    expected = conv_output_lengths(lens, tiny_hubert.convs)
    assert expected.tolist() == [49, 34]
    for s, n in zip(states, lengths):
        assert s.shape == (2, 49, 32)
        assert n.tolist() == expected.tolist()
    # (no padding-invariance check: HuBERT Base's first conv has a group norm over time, so
    # padding changes the features of shorter utterances, in fairseq and s3prl alike)


def test_distiller_forward_returns_states_like_s3prl(tiny_distiller, batch):
    wavs, lens = batch
    with torch.no_grad():
        states, lengths = tiny_distiller(wavs, lens)
    assert len(states) == 1 + 1 + 2
    assert all(s.shape == (2, 49, 32) for s in states)
    assert lengths[0].tolist() == [49, 34]


def test_hubert_s3prl_checkpoint_round_trip_is_bit_exact(tiny_hubert, batch, tmp_path):
    path = tmp_path / "hubert.pt"
    torch.save(tiny_hubert.s3prl_state(), path)
    loaded = load_upstream("hubert_base", checkpoint=path, device="cpu")
    for (k, a), (k2, b) in zip(tiny_hubert.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*batch)[0][-1], tiny_hubert(*batch)[0][-1], rtol=0, atol=0)
    # and s3prl's own loader reads the same file
    from s3prl.upstream.hubert.convert import load_converted_model

    model, _ = load_converted_model(str(path))
    assert torch.equal(model.encoder.layers[0].fc1.weight, tiny_hubert.model.encoder.layers[0].fc1.weight)


def test_hubert_fairseq_checkpoint_loads_without_fairseq(tiny_hubert, tmp_path, monkeypatch):
    import sys
    import types

    # Build a pickle that references fairseq's Dictionary class, as real fairseq files do.
    fairseq = types.ModuleType("fairseq")
    data = types.ModuleType("fairseq.data")
    dictionary = types.ModuleType("fairseq.data.dictionary")

    class Dictionary:
        def __init__(self, symbols):
            self.symbols = symbols

    Dictionary.__module__ = "fairseq.data.dictionary"
    Dictionary.__qualname__ = "Dictionary"
    dictionary.Dictionary = Dictionary
    for name, mod in [("fairseq", fairseq), ("fairseq.data", data), ("fairseq.data.dictionary", dictionary)]:
        monkeypatch.setitem(sys.modules, name, mod)
    state = tiny_hubert.s3prl_state()
    ckpt = {
        "cfg": {"model": state["model_cfg"], "task": state["task_cfg"]},
        "model": state["model_weight"],
        "task_state": {"dictionaries": [Dictionary(list("abcdefgh"))]},
    }
    path = tmp_path / "fairseq.pt"
    torch.save(ckpt, path)
    for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary"):
        monkeypatch.delitem(sys.modules, name)
    loaded = load_upstream("hubert_base", checkpoint=path, device="cpu")
    assert loaded.symbols == [list("abcdefgh")]
    assert torch.equal(loaded.model.encoder.layers[1].fc2.weight, tiny_hubert.model.encoder.layers[1].fc2.weight)


def test_distiller_checkpoint_round_trip_and_s3prl_reads_it(tiny_distiller, batch, tmp_path):
    path = tmp_path / "distiller.ckpt"
    torch.save(tiny_distiller.s3prl_state(), path)
    loaded = load_upstream("distilhubert", checkpoint=path, device="cpu")
    with torch.no_grad():
        for a, b in zip(loaded(*batch)[0], tiny_distiller(*batch)[0]):
            assert torch.equal(a, b)
    from s3prl.upstream.distiller.builder import PretrainedDistiller

    ref = PretrainedDistiller({"ckpt_file": str(path), "load_pretrain": "True", "no_grad": "True", "permute_input": "False"})
    assert torch.equal(ref.model.encoder.layers[0].fc1.weight, tiny_distiller.model.encoder.layers[0].fc1.weight)


def test_bad_checkpoints_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_upstream("hubert_base", checkpoint=tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_upstream("hubert_base", checkpoint=junk)
    wrong = tmp_path / "wrong.pt"
    torch.save({"weights": {}}, wrong)
    with pytest.raises(CheckpointError, match="neither"):
        load_upstream("hubert_base", checkpoint=wrong)
    with pytest.raises(CheckpointError, match="Distiller"):
        load_upstream("distilhubert", checkpoint=wrong)


def test_offline_hub_request_fails_fast_naming_the_alternatives(tmp_path, monkeypatch):
    from s3prl.util import download

    monkeypatch.setattr(download, "_download_dir", tmp_path)  # no cached copy
    started = time.time()
    with pytest.raises(UpstreamUnavailable) as err:
        load_upstream("hubert_base")
    assert time.time() - started < 10
    assert "checkpoint=" in str(err.value) and "random_init=True" in str(err.value)


def test_unreachable_host_is_detected_quickly():
    from upstream_quant.loading import _reachable

    started = time.time()
    assert not _reachable("http://127.0.0.1:9/hubert.pt", timeout=2)
    assert time.time() - started < 5


def test_unknown_upstream_lists_known_ones():
    with pytest.raises(KeyError, match="hubert_base"):
        load_upstream("hubret", random_init=True)


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")


def test_bad_batch_shapes(tiny_hubert):
    with pytest.raises(ValueError, match="batch, samples"):
        tiny_hubert(torch.zeros(16000), torch.tensor([16000]))
    with pytest.raises(ValueError, match="exceeds"):
        tiny_hubert(torch.zeros(1, 16000), torch.tensor([20000]))

"""The wav2vec 2.0 upstream: the real Base inventory, s3prl and fairseq checkpoints, and the
quantizers and packed files working on it unchanged."""
import pytest
import torch

from upstream_quant import load_upstream
from upstream_quant.accounting import inventory_summary, param_inventory
from upstream_quant.checkpoints import CheckpointError
from upstream_quant.methods.gptq import GPTQConfig
from upstream_quant.packed import load_packed, save_packed
from upstream_quant.quantize import quantize
from upstream_quant.upstreams.wav2vec2 import build_wav2vec2

TINY = {
    "model_cfg": {"encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4,
                  "conv_feature_layers": "[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2", "conv_pos": 16,
                  "conv_pos_groups": 4, "final_dim": 16, "latent_vars": 8, "latent_groups": 2},
    "task_cfg": {"sample_rate": 16000, "normalize": False},
}


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return build_wav2vec2(TINY["model_cfg"], TINY["task_cfg"], "wav2vec2_base").eval()


def test_base_random_init_has_the_real_inventory_and_matches_hubert_at_inference():
    w2v = load_upstream("wav2vec2_base", random_init=True, device="cpu")
    hubert = load_upstream("hubert_base", random_init=True, device="cpu")
    summary = inventory_summary(param_inventory(w2v))
    assert summary[("transformer", "weight")] == 84_934_656 and summary[("cnn", "weight")] == 4_199_424
    assert summary[("positional_conv", "weight")] == 4_718_592
    assert w2v.num_hidden_states == 13 and w2v.hidden_size == 768

    def inference(up):  # everything but the pretraining-only parameters
        return sum(n for (g, _), n in inventory_summary(param_inventory(up)).items() if g not in ("heads", "other"))

    assert inference(w2v) == inference(hubert)  # the same encoder at inference (different pretraining heads)


def test_forward_states_checkpoints_and_s3prl_reads_ours(tiny, batch, tmp_path):
    with torch.no_grad():
        states, lens = tiny(*batch)
    assert len(states) == 3 and all(s.shape[0] == batch[0].shape[0] and s.shape[-1] == 32 for s in states)
    assert all(torch.equal(l, lens[0]) for l in lens) and int(lens[0].max()) == states[-1].shape[1]
    path = tmp_path / "w2v.pt"
    torch.save(tiny.s3prl_state(), path)
    loaded = load_upstream("wav2vec2_base", checkpoint=path, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(loaded(*batch)[0][-1], states[-1], rtol=0, atol=0)
    from s3prl.upstream.wav2vec2.convert import load_converted_model

    model, _ = load_converted_model(str(path))
    assert torch.equal(model.encoder.layers[1].fc2.weight, tiny.model.encoder.layers[1].fc2.weight)
    state = tiny.s3prl_state()
    fairseq = tmp_path / "fairseq.pt"
    torch.save({"cfg": {"model": state["model_cfg"], "task": state["task_cfg"]}, "model": state["model_weight"]}, fairseq)
    assert torch.equal(load_upstream("wav2vec2_base", checkpoint=fairseq, device="cpu").model.post_extract_proj.weight,
                       tiny.model.post_extract_proj.weight)
    finetuned = tmp_path / "ctc.pt"
    torch.save({"cfg": {"model": {}, "task": {}}, "model": {"w2v_encoder.proj.weight": torch.zeros(2, 2)}}, finetuned)
    with pytest.raises(CheckpointError, match="fine-tuned fairseq checkpoint .*w2v_args lacks"):  # a damaged one
        load_upstream("wav2vec2_base", checkpoint=finetuned, device="cpu")


def test_quantizers_and_packed_files_work_on_it_unchanged(tiny, batch, tmp_path):
    wavs = [0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    q = quantize(tiny, GPTQConfig(bits=4), calibration=wavs, progress=False)
    path = save_packed(q, tmp_path / "w2v4.safetensors")
    reloaded = load_packed(path, device="cpu")
    from upstream_quant.qweight import QuantizedLayer

    ours = {n: m.weight for n, m in q.named_modules() if isinstance(m, QuantizedLayer)}
    back = {n: m.weight for n, m in reloaded.named_modules() if isinstance(m, QuantizedLayer)}
    assert ours.keys() == back.keys() and len(ours) == 12 and all(torch.equal(ours[n], back[n]) for n in ours)
    with torch.no_grad():  # the unquantized tensors are stored in fp16: outputs agree to fp16 rounding
        a, b = reloaded(*batch)[0][-1], q(*batch)[0][-1]
    assert float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) > 0.9999
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:  # the pretraining-only tensors are left out of the file
        assert not any(k.startswith(("model.quantizer", "model.project_q", "model.final_proj")) for k in f.keys())

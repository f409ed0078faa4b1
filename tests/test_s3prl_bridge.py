"""Our quantized upstreams inside s3prl's own Featurizer and legacy expert interface."""

import torch

from upstream_quant import compat
from upstream_quant.packed import save_packed
from upstream_quant.quantize import quantize
from upstream_quant.s3prl_bridge import S3PRLCompatible, UpstreamExpert
from upstream_quant.methods.uniform import UniformConfig


def test_s3prl_featurizer_and_expert_take_a_quantized_upstream(tiny_hubert, batch, tmp_path):
    compat.ensure_torchaudio()
    from s3prl.nn import Featurizer

    q = quantize(tiny_hubert, UniformConfig(bits=4), progress=False)
    up = S3PRLCompatible(q)
    feat = Featurizer(up)
    wavs, lens = batch
    with torch.no_grad():
        states, state_lens = up(wavs, lens)
        out, out_lens = feat(states, state_lens)
    assert out.shape == states[0].shape and torch.equal(out_lens, state_lens[-1])
    path = save_packed(q, tmp_path / "q.safetensors")
    expert = UpstreamExpert(str(path))
    with torch.no_grad():
        hs = expert([wavs[0], wavs[1, : int(lens[1])]])["hidden_states"]
    assert len(hs) == tiny_hubert.num_hidden_states and expert.get_downsample_rates("hidden_states") == 320
    assert torch.allclose(hs[-1][0], states[-1][0], atol=1e-2)  # packed files hold the other weights in fp16

"""End-to-end ASR, myQASR's evaluation: a fine-tuned CTC model (wav2vec 2.0 960 h) decodes with
its own output layer and letters, greedily; corpus-level WER and CER (jiwer). No head is trained:
the quantized model is evaluated as it is, so its output layer must come with the upstream
(``upstream.ctc_head`` and ``upstream.ctc``, as `upstream_quant.upstreams.wav2vec2` loads a
fine-tuned fairseq checkpoint or a transformers ``Wav2Vec2ForCTC`` folder)."""

from __future__ import annotations

import torch

from .. import librispeech  # noqa: F401  (registers its layout)
from ..features import FrozenUpstream
from .asr import ASRTask
from .base import TaskConfig, TaskSpec, register_task
from .ctc import CTCTask


class E2EASRTask(CTCTask):
    metric_name, metric_mode = "wer", "min"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        model = upstream.upstream
        if getattr(model, "ctc", None) is None:
            raise ValueError(f"task e2e_asr decodes with the upstream's own CTC output layer; {model.name} has none. Give a "
                             "fine-tuned checkpoint (a fairseq wav2vec 2.0 CTC .pt with its dict.ltr.txt, or a transformers "
                             "Wav2Vec2ForCTC folder), e.g. upstream wav2vec2_base_960h")
        self.output, self.blank = model.ctc, model.ctc.blank
        self.head = model.ctc_head  # the upstream's, frozen with it

    def log_probs(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(x.to(self.head.weight.dtype))  # logits: greedy decoding needs no softmax

    def reference(self, utterance) -> str:
        return utterance.transcript

    def decode(self, ids: list[int]) -> str:
        return self.output.decode(ids)

    unit_scores = staticmethod(ASRTask.unit_scores)


def e2e_asr() -> TaskConfig:
    """The encoder output (the state the output layer was fine-tuned on), nothing trained."""
    return TaskConfig(task="e2e_asr", layer=-1, specaug=False, batch_size=8, max_batch_seconds=200.0)


SPEC = register_task(TaskSpec(
    name="e2e_asr", title="ASR (end-to-end CTC)", module=E2EASRTask, metrics=("wer", "cer"), axis_label="WER (%)",
    layouts=("librispeech",), presets={"e2e_asr": e2e_asr}, trains_head=False))

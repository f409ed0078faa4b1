"""End-to-end ASR: a model decodes with its own output layer, greedily; corpus-level WER and CER
(jiwer). No head is trained: the quantized model is evaluated as it is, so its output layer must
come with the upstream. Two kinds:

- myQASR's evaluation: a fine-tuned CTC model (wav2vec 2.0 960 h) with its letters
  (``upstream.ctc_head`` and ``upstream.ctc``, as `upstream_quant.upstreams.wav2vec2` loads a
  fine-tuned fairseq checkpoint or a transformers ``Wav2Vec2ForCTC`` folder);
- an encoder-decoder (Whisper tiny.en, ``upstream.text_decoder()``): each utterance is padded to
  Whisper's 30 s window, as Whisper was trained (on shorter windows its decoder repeats itself),
  encoded by the (quantized) encoder and decoded greedily by the full-precision decoder; its
  written output is brought to the transcripts' spelled form (`text.spoken`) for scoring."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import librispeech  # noqa: F401  (registers its layout)
from .. import text
from ..features import FrozenUpstream
from .asr import ASRTask
from .base import TaskConfig, TaskSpec, register_task
from .ctc import CTCTask


def input_window(upstream) -> int | None:
    """The samples each utterance is padded to before the upstream sees it: Whisper's 30 s window
    when it decodes with its own text decoder; None for a CTC model (utterances as they are)."""
    if getattr(upstream, "ctc", None) is None and hasattr(upstream, "text_decoder"):
        return upstream.max_samples
    return None


class E2EASRTask(CTCTask):
    metric_name, metric_mode = "wer", "min"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        model = upstream.upstream
        self.text_decoder = None
        if getattr(model, "ctc", None) is None:
            self.text_decoder = model.text_decoder() if hasattr(model, "text_decoder") else None
            if self.text_decoder is None:
                raise ValueError(f"task e2e_asr decodes with the upstream's own output layer; {model.name} has none. Give a "
                                 "fine-tuned CTC checkpoint (a fairseq wav2vec 2.0 CTC .pt with its dict.ltr.txt, or a "
                                 "transformers Wav2Vec2ForCTC folder), e.g. upstream wav2vec2_base_960h, or use "
                                 "whisper_tiny_en (its own decoder)")
            self.head = None
            return
        self.output, self.blank = model.ctc, model.ctc.blank
        self.head = model.ctc_head  # the upstream's, frozen with it

    def log_probs(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(x.to(self.head.weight.dtype))  # logits: greedy decoding needs no softmax

    def predict(self, batch) -> list[tuple[str, str]]:
        if self.text_decoder is None:
            return super().predict(batch)
        window = input_window(self.upstream.upstream)
        lengths = batch["lengths"]
        if int(lengths.max()) > window:
            long = [u.id for u, n in zip(batch["utterances"], lengths.tolist()) if n > window]
            raise ValueError(f"e2e_asr with Whisper's decoder reads 30 s windows; utterance(s) {long} are longer")
        padded = F.pad(batch["wavs"], (0, window - batch["wavs"].shape[1]))
        x, _ = self.features({**batch, "wavs": padded, "lengths": torch.full_like(lengths, window)})
        hyps = self.text_decoder.to(x.device).transcribe(x)
        return [(self.reference(u), text.spoken(h)) for u, h in zip(batch["utterances"], hyps)]

    def reference(self, utterance) -> str:
        return utterance.transcript

    def decode(self, ids: list[int]) -> str:
        return self.output.decode(ids)

    unit_scores = staticmethod(ASRTask.unit_scores)


def e2e_asr() -> TaskConfig:
    """The encoder output (the state the output layer was fine-tuned on), nothing trained.
    Batches of up to 20 utterances (600 s): a greedy decoder's step costs about the same for 8
    or 20 sequences on a CPU, so larger batches halve the decoding time (measured on mini's
    passages: 35 s -> 17 s a row; the transcripts are the same, each sequence decodes alone)."""
    return TaskConfig(task="e2e_asr", layer=-1, specaug=False, batch_size=20, max_batch_seconds=600.0)


SPEC = register_task(TaskSpec(
    name="e2e_asr", title="ASR (end to end, the model's own decoder)", module=E2EASRTask, metrics=("wer", "cer"), axis_label="WER (%)",
    layouts=("librispeech",), presets={"e2e_asr": e2e_asr}, trains_head=False, window=input_window))

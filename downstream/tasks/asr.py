"""ASR (SUPERB): CTC over SUPERB's characters with a BiLSTM head; greedy decoding; corpus-level
WER and CER (jiwer) on LibriSpeech."""

from __future__ import annotations

from .. import librispeech, metrics, text  # noqa: F401  (librispeech: registers its layout)
from ..features import FrozenUpstream
from ..heads import ASRHead
from .base import TaskConfig, TaskSpec, register_task
from .ctc import CTCTask


class ASRTask(CTCTask):
    metric_name, metric_mode = "wer", "min"

    def __init__(self, upstream: FrozenUpstream, config: TaskConfig):
        super().__init__(upstream, config)
        self.head = ASRHead(upstream.hidden_size, len(text.VOCAB), config.proj, config.hidden, config.lstm_layers, config.dropout)

    def targets(self, utterance) -> list[int]:
        return text.encode(utterance.transcript)

    def reference(self, utterance) -> str:
        return utterance.transcript

    def decode(self, ids: list[int]) -> str:
        return text.decode(ids)

    @staticmethod
    def unit_scores(pairs: list[tuple[str, str]]) -> dict[str, metrics.Units]:
        """Word and character edits per utterance (their sums: jiwer's corpus WER and CER)."""
        refs = [r for r, _ in pairs]
        hyps = [h for _, h in pairs]
        return {"wer": metrics.word_edits(refs, hyps), "cer": metrics.char_edits(refs, hyps)}


def superb_asr() -> TaskConfig:
    return TaskConfig(task="asr")


def mini_asr() -> TaskConfig:
    """CPU scale model of SUPERB's ASR head: one BiLSTM layer of 192 (SUPERB: two of 1024), learning
    rate 3e-3 (SUPERB: 1e-4), about 250 steps, validation every 4 epochs, cached features. Chosen by
    measurement on the synthetic digits corpus: Whisper tiny.en features leave CTC's all-blank
    phase by step ~150 and reach a few % WER in about a minute on 2 CPU cores."""
    return TaskConfig(task="asr", proj=192, hidden=192, lstm_layers=1, lr=3e-3, max_steps=250, batch_size=16,
                      max_batch_seconds=120.0, val_every_epochs=4, cache_features=True, cache_mb=1024, normalize=True)


SPEC = register_task(TaskSpec(
    name="asr", title="ASR", module=ASRTask, metrics=("wer", "cer"), axis_label="WER (%)", layouts=("librispeech",),
    presets={"superb_asr": superb_asr, "mini_asr": mini_asr}))

"""CTC training and greedy decoding over a token vocabulary, shared by the sequence tasks (ASR's
characters, PR's phones). Not a task itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DownstreamTask


class CTCTask(DownstreamTask):
    """Subclasses set ``self.head`` (log-probabilities over ``len(vocab)`` tokens, ``blank`` the
    CTC blank's index) and give ``targets(utterance) -> token ids`` and ``reference(utterance) /
    decode(ids) -> str``; `log_probs` is where the head meets the features."""

    blank = 0

    def log_probs(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(x, lengths)

    def targets(self, utterance) -> list[int]:
        raise NotImplementedError

    def reference(self, utterance) -> str:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def loss(self, x, lengths, batch):
        log_probs = self.log_probs(x, lengths)
        targets = [torch.tensor(self.targets(u), dtype=torch.long) for u in batch["utterances"]]
        target_lengths = torch.tensor([len(t) for t in targets])
        return F.ctc_loss(log_probs.transpose(0, 1).float(), torch.cat(targets).to(x.device), lengths.cpu(), target_lengths,
                          blank=self.blank, zero_infinity=True)

    def predict(self, batch) -> list[tuple[str, str]]:
        x, lengths = self.features(batch)
        best = self.log_probs(x, lengths).argmax(-1).cpu()
        out = []
        for ids, n, utt in zip(best, lengths.cpu(), batch["utterances"]):
            ids = torch.unique_consecutive(ids[: int(n)]).tolist()
            out.append((self.reference(utt), self.decode([i for i in ids if i != self.blank])))
        return out

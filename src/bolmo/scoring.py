"""Scoring: per-byte log-probabilities with the boundary decision folded in, and bits per byte.

The 520-way output splits each next id x into "x" and "x, then a patch ends"; the probability of
the byte itself is the sum of the two: log p(x) = logsumexp(logits[x], logits[x + 260]) -
logsumexp(logits). (The same value as the reference's softmax-then-add, computed stably.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bolmo.config import PLAIN_VOCAB


@dataclass
class ScoreResult:
    text: str
    byte_logprobs: torch.Tensor  # [n_bytes] float32: log p(byte i | everything before it)
    nats: float  # total negative log-likelihood in nats
    n_bytes: int

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.n_bytes if self.n_bytes else float("nan")

    def as_dict(self) -> dict:
        return {"text": self.text, "n_bytes": self.n_bytes, "nats": self.nats, "bits_per_byte": self.bits_per_byte}


def folded_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [..., 520], targets [...] plain ids < 260 -> log p(target) [...] in float32."""
    logits = logits.float()
    norm = torch.logsumexp(logits, dim=-1)
    plain = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    fused = logits.gather(-1, (targets + PLAIN_VOCAB).unsqueeze(-1)).squeeze(-1)
    return torch.logaddexp(plain, fused) - norm


@torch.inference_mode()
def score_texts(model, texts: list[str], batch_size: int = 8) -> list[ScoreResult]:
    """Score each text (BOS + its UTF-8 bytes); batches are right-padded, each row scored exactly
    as it would be alone."""
    results: list[ScoreResult] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        ids, mask = model.tokenizer.batch(chunk, padding_side="right")
        ids, mask = ids.to(model.device), mask.to(model.device)
        out = model(ids, attention_mask=mask)  # masked even when unpadded: rows stay independent
        logprobs = folded_logprobs(out.logits[:, :-1], ids[:, 1:])
        for row, text in enumerate(chunk):
            n_bytes = int(mask[row].sum()) - 1
            lp = logprobs[row, :n_bytes].cpu()
            results.append(ScoreResult(text=text, byte_logprobs=lp, nats=float(-lp.double().sum()), n_bytes=n_bytes))
    return results

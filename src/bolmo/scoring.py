"""Scoring: per-byte log-probabilities and bits per byte, for Bolmo and subword OLMo models.

Bolmo: the 520-way output splits each next id x into "x" and "x, then a patch ends"; the probability of
the byte itself is the sum of the two: log p(x) = logsumexp(logits[x], logits[x + 260]) -
logsumexp(logits). (The same value as the reference's softmax-then-add, computed stably.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bolmo.config import BYTE_OFFSET, PLAIN_VOCAB
from bolmo.errors import TokenizerError
from bolmo.model.bolmo import BolmoForCausalLM


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


def folded_byte_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """logits [..., 520] -> log p(byte b) [..., 256] in float32 for every byte value b (the
    boundary decision folded in, as in `folded_logprobs`): a server's top log-probabilities."""
    logits = logits.float()
    plain = logits[..., BYTE_OFFSET:PLAIN_VOCAB]
    fused = logits[..., PLAIN_VOCAB + BYTE_OFFSET :]
    return torch.logaddexp(plain, fused) - torch.logsumexp(logits, dim=-1, keepdim=True)


@torch.inference_mode()
def byte_distributions(model: BolmoForCausalLM, text: str) -> torch.Tensor:
    """[n_bytes, 256]: for each UTF-8 byte of `text`, log p(every byte value | BOS and the bytes
    before it), computed as `score_bolmo` does (its byte_logprobs are this table's diagonal)."""
    ids, mask = model.tokenizer.batch([text], padding_side="right")
    ids, mask = ids.to(model.device), mask.to(model.device)
    out = model(ids, attention_mask=mask)
    return folded_byte_logprobs(out.logits[0, :-1]).cpu()


def score_texts(model, texts: list[str], batch_size: int = 8) -> list[ScoreResult]:
    """Score each text after the start id, with a Bolmo or a subword OLMo model; batches are
    right-padded and each row is scored exactly as it would be alone."""
    if isinstance(model, BolmoForCausalLM):
        return score_bolmo(model, texts, batch_size)
    return score_subword(model, texts, batch_size)


@torch.inference_mode()
def score_bolmo(model, texts: list[str], batch_size: int = 8) -> list[ScoreResult]:
    """BOS + each text's UTF-8 bytes through the model; each byte's probability folds the
    boundary decision in."""
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


@torch.inference_mode()
def score_subword(model, texts: list[str], batch_size: int = 8) -> list[ScoreResult]:
    """Score each text with a subword OLMo model.

    `byte_logprobs` has one entry per UTF-8 byte like Bolmo's, but a subword model only gives
    whole-token probabilities: each token's log-probability sits at the token's last byte and the
    other bytes hold 0, so sums over any span of whole tokens (and `nats`) are exact.
    """
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise TokenizerError("this model was loaded without a tokenizer (its directory has no tokenizer.json)")
    results: list[ScoreResult] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        ids, mask = tokenizer.batch(chunk, padding_side="right")
        ids, mask = ids.to(model.device), mask.to(model.device)
        hidden = model.model(ids, mask if not bool(mask.all()) else None)
        for row, text in enumerate(chunk):
            n = int(mask[row].sum())
            targets = ids[row, 1:n]
            # One row's logits at a time: [T, vocab] can be large for a 100k vocabulary.
            logprobs = torch.log_softmax(model.lm_head(hidden[row, : n - 1]).float(), dim=-1)
            token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
            n_bytes = len(text.encode("utf-8"))
            lengths = torch.tensor([len(tokenizer.decode_bytes([t])) for t in targets.tolist()], dtype=torch.long)
            ends = (lengths.cumsum(0) - 1).clamp(0, max(n_bytes - 1, 0))
            byte_lp = torch.zeros(n_bytes, dtype=torch.float32)
            if n_bytes:
                byte_lp.index_add_(0, ends, token_lp)
            results.append(ScoreResult(text=text, byte_logprobs=byte_lp, nats=float(-token_lp.double().sum()),
                                       n_bytes=n_bytes))
    return results

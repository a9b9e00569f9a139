"""Scoring: per-byte log-probabilities and bits per byte, for Bolmo and subword OLMo models.

Bolmo: the 520-way output splits each next id x into "x" and "x, then a patch ends"; the probability of
the byte itself is the sum of the two: log p(x) = logsumexp(logits[x], logits[x + 260]) -
logsumexp(logits). (The same value as the reference's softmax-then-add, computed stably.)

Long texts are scored in windows (`windows`) that fit the model's positions: a model never sees
more ids at once than it has positions, so the numbers stay those of the model card rather than of
a model run past what it was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from bolmo.config import BYTE_OFFSET, PLAIN_VOCAB
from bolmo.errors import ScoringError, warn
from bolmo.model.bolmo import BolmoForCausalLM
from bolmo.tokenizer import pad_rows, tokenizer_of


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


@dataclass(frozen=True)
class Window:
    """One forward pass over a long sequence: the start id, then ids [start, end) of the sequence;
    ids [start, scored_from) are context only, ids [scored_from, end) are scored."""

    start: int
    scored_from: int
    end: int


def default_context(max_ids: int) -> int:
    """The ids of context a window after the first reads by default: half the window."""
    return max_ids // 2


def windows(n: int, max_ids: int, context: int | None = None) -> list[Window]:
    """Cut a sequence of `n` ids (bytes for Bolmo, tokens for a subword model; the start id not
    counted) into windows of at most `max_ids` ids that score every id exactly once.

    The rule: the first window scores ids [0, max_ids) with everything before them as context; each
    later one scores the next `max_ids - context` ids, after the `context` ids before them, which
    it reads but does not score. So every id is predicted from at least min(its position, context)
    preceding ids. `context` defaults to half a window (`default_context`).

    For Bolmo, `max_ids` = max_position_embeddings - 1 bytes: a patch holds at least one byte, so
    the start id plus max_ids bytes never make more patches than the global model has positions,
    however short the patches. For a subword model, max_ids = max_position_embeddings - 1 tokens.
    """
    if max_ids < 1:
        raise ScoringError(f"a window must hold at least one id, got max_ids={max_ids}")
    context = default_context(max_ids) if context is None else context
    if not 0 <= context < max_ids:
        raise ScoringError(f"context must be in [0, {max_ids - 1}] (the window holds {max_ids} ids), got {context}")
    result = [Window(0, 0, min(n, max_ids))]
    while result[-1].end < n:
        scored_from = result[-1].end
        result.append(Window(scored_from - context, scored_from, min(n, scored_from + max_ids - context)))
    return result


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


def window_ids(model, sequences: Sequence[Sequence[int]]) -> int:
    """The ids a scoring window holds after its start id: the model's positions - 1, or the longest
    text (one window each) where the checkpoint does not say (`context_positions` None)."""
    positions = model.config.context_positions
    return positions - 1 if positions is not None else max([1, *(len(s) for s in sequences)])


def empty_text_error(name: str) -> ScoringError:
    """The refusal of an empty file or corpus (`bolmo score`, `bolmo eval bpb`): it has no bytes to
    divide by, so its bits per byte would be NaN rather than a number."""
    return ScoringError(f"{name}: empty, nothing to score")


def check_texts(texts: Sequence[str], batch_size: int, context: int | None) -> None:
    """A list of strings and sane options, or ScoringError saying what is wrong (like generate's
    prompts, a bare string is refused rather than scored as a list of characters). An empty text
    scores 0 bytes, 0 nats and a NaN bits per byte (0 / 0), as documented, with a warning."""
    if isinstance(texts, (str, bytes)):
        raise ScoringError("texts must be a list of strings (wrap a single text in a list)")
    if not isinstance(texts, Sequence):
        raise ScoringError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ScoringError(f"texts[{i}] is a {type(text).__name__}, not a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ScoringError(f"texts[{i}] cannot be encoded as UTF-8 ({exc.reason} at character {exc.start})") from None
    empty = [i for i, text in enumerate(texts) if not text]
    if empty:
        warn(f"texts{empty} {'is' if len(empty) == 1 else 'are'} empty: 0 bytes, bits per byte NaN (0 / 0)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScoringError(f"batch_size must be a positive integer, got {batch_size!r}")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 0):
        raise ScoringError(f"context must be a non-negative integer or None, got {context!r}")


def score_texts(model, texts: Sequence[str], batch_size: int = 8, context: int | None = None) -> list[ScoreResult]:
    """Score each text after the start id, with a Bolmo or a subword OLMo model, in windows that
    fit the model (see `windows`; `context` ids of context per window). Batches are right-padded
    and each row is scored exactly as it would be alone."""
    check_texts(texts, batch_size, context)
    if isinstance(model, BolmoForCausalLM):
        return score_bolmo(model, texts, batch_size, context)
    return score_subword(model, texts, batch_size, context)


# One forward pass over a padded batch -> log p(next id) [B, L - 1] (float32, any device).
RowScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def score_windows(score_rows: RowScorer, sequences: list[list[int]], start_id: int, pad_id: int,
                  max_ids: int, batch_size: int, context: int | None = None,
                  device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """log p(id i | the ids before it, within its window) for every id of every sequence: one float32
    tensor per sequence. Windows of all sequences are batched together, `batch_size` at a time."""
    jobs = [(s, w) for s, seq in enumerate(sequences) for w in windows(len(seq), max_ids, context) if w.end > w.start]
    out = [torch.zeros(len(seq), dtype=torch.float32) for seq in sequences]
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first : first + batch_size]
        ids, mask = pad_rows([[start_id] + sequences[s][w.start : w.end] for s, w in chunk], pad_id, "right")
        logprobs = score_rows(ids.to(device), mask.to(device)).cpu()
        for row, (s, w) in enumerate(chunk):
            out[s][w.scored_from : w.end] = logprobs[row, w.scored_from - w.start : w.end - w.start]
    for s, lp in enumerate(out):
        if not torch.isfinite(lp).all():
            raise ScoringError(f"texts[{s}]: the model gave non-finite log-probabilities (NaN or infinite weights, "
                               "or an overflow in this dtype); no score is reported")
    return out


@torch.inference_mode()
def score_bolmo(model, texts: Sequence[str], batch_size: int = 8, context: int | None = None) -> list[ScoreResult]:
    """BOS + each text's UTF-8 bytes through the model; each byte's probability folds the
    boundary decision in."""
    tokenizer = model.tokenizer

    def score_rows(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = model(ids, attention_mask=mask)  # masked even when unpadded: rows stay independent
        return folded_logprobs(out.logits[:, :-1], ids[:, 1:])

    sequences = [tokenizer.encode(text, add_bos=False) for text in texts]
    logprobs = score_windows(score_rows, sequences, tokenizer.bos_id, tokenizer.pad_id, window_ids(model, sequences),
                             batch_size, context, model.device)
    return [ScoreResult(text=text, byte_logprobs=lp, nats=0.0 - float(lp.double().sum()), n_bytes=lp.numel())
            for text, lp in zip(texts, logprobs)]


@torch.inference_mode()
def score_subword(model, texts: Sequence[str], batch_size: int = 8, context: int | None = None) -> list[ScoreResult]:
    """Score each text with a subword OLMo model (windows counted in tokens).

    `byte_logprobs` has one entry per UTF-8 byte like Bolmo's, but a subword model only gives
    whole-token probabilities: each token's log-probability sits at the token's last byte and the
    other bytes hold 0, so sums over any span of whole tokens (and `nats`) are exact.
    """
    tokenizer = tokenizer_of(model)

    def score_rows(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = model.model(ids, mask if not bool(mask.all()) else None)
        rows = []
        for row in range(ids.shape[0]):  # one row's logits at a time: [T, vocab] is large for 100k ids
            logprobs = torch.log_softmax(model.lm_head(hidden[row, :-1]).float(), dim=-1)
            rows.append(logprobs.gather(-1, ids[row, 1:].unsqueeze(-1)).squeeze(-1))
        return torch.stack(rows)

    start = tokenizer.encode("")[0]
    sequences = [tokenizer.encode(text)[1:] for text in texts]
    token_logprobs = score_windows(score_rows, sequences, start, tokenizer.pad_id, window_ids(model, sequences),
                                   batch_size, context, model.device)
    results: list[ScoreResult] = []
    for text, targets, token_lp in zip(texts, sequences, token_logprobs):
        n_bytes = len(text.encode("utf-8"))
        lengths = torch.tensor([len(tokenizer.decode_bytes([t])) for t in targets], dtype=torch.long)
        ends = (lengths.cumsum(0) - 1).clamp(0, max(n_bytes - 1, 0))
        byte_lp = torch.zeros(n_bytes, dtype=torch.float32)
        if n_bytes:
            byte_lp.index_add_(0, ends, token_lp)
        results.append(ScoreResult(text=text, byte_logprobs=byte_lp, nats=0.0 - float(token_lp.double().sum()),
                                   n_bytes=n_bytes))
    return results

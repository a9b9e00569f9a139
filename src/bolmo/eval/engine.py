"""Log-likelihoods of continuations, batched across requests without changing any result.

One request is (context ids, continuation ids). The model sees start + context + continuation +
lookahead, minus the last id (olmes' `hf_bolmo` protocol for Bolmo; the usual causal-LM protocol
for subword models, whose lookahead is empty); the continuation's log-probabilities are summed
and `is_greedy` says whether every continuation id was the argmax.

Rows are sorted by length (longest first, so padding is small) and right-padded with an
attention mask, so each row is computed exactly as it would be alone: a request's value never
depends on the batch size or on its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from bolmo.errors import BolmoError, ContextWarning, warn
from bolmo.eval.schemes import Scheme, scheme_for


@dataclass(frozen=True)
class IdRequest:
    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class Loglikelihood:
    logprob: float  # sum of log p(continuation id | everything before it), nats
    is_greedy: bool  # every continuation id was the model's argmax
    n_ids: int  # continuation ids scored: bytes for Bolmo, tokens for a subword model


def move_trailing_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's rule: a context's trailing whitespace belongs to the continuation
    ("Answer:" + " Paris", not "Answer: " + "Paris")."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


class Scorer:
    """Scores requests with one model (Bolmo or subword, as `bolmo.load` returns them).

    `max_length` bounds the ids the model sees per row; longer requests lose context from the
    left (the start id stays), as lm-eval's `hf` model does. None: the model's context (its
    `context_positions`, see `context_length`; unbounded where the checkpoint does not say), so
    that no request is scored past the positions the model was trained on; a continuation longer
    than that context is then scored whole, after the start id alone, with a ContextWarning (a
    `max_length` given explicitly refuses it).
    """

    def __init__(self, model, batch_size: int = 16, max_length: int | None = None) -> None:
        if batch_size < 1:
            raise BolmoError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.scheme: Scheme = scheme_for(model)
        self.batch_size = batch_size
        self.strict_length = max_length is not None
        self.max_length = max_length if max_length is not None else self.context_length()

    def context_length(self) -> int | None:
        """The default `max_length`: the start id, context and continuation within the model's
        positions (`model.score`'s windows), plus the lookahead id fed after them, which only
        decides whether the last byte ends a patch, something no scored probability depends on."""
        positions = self.model.config.context_positions
        return None if positions is None else positions + max(0, len(self.scheme.lookahead) - 1)

    # ------------------------------------------------------------------ text requests
    def encode_pair(self, context: str, continuation: str) -> IdRequest:
        """Ids of a (context, continuation) text pair after lm-eval's whitespace rule. Subword
        continuations are the ids of context + continuation after those of the context alone,
        so the tokenization of the joint text is the one scored (lm-eval's `hf` does the same)."""
        context, continuation = move_trailing_whitespace(context, continuation)
        context_ids = self.scheme.encode(context)
        if self.scheme.is_bytes:
            return IdRequest(tuple(context_ids), tuple(self.scheme.encode(continuation)))
        whole = self.scheme.encode(context + continuation)
        return IdRequest(tuple(whole[: len(context_ids)]), tuple(whole[len(context_ids):]))

    def loglikelihood(self, pairs: Sequence[tuple[str, str]],
                      progress: Callable[[int], None] | None = None) -> list[Loglikelihood]:
        return self.score([self.encode_pair(c, x) for c, x in pairs], progress)

    # ------------------------------------------------------------------ id requests
    def row(self, request: IdRequest) -> tuple[list[int], int, list[int]]:
        """(input ids, position of the first continuation id, continuation ids) for one request."""
        ids = [self.scheme.start, *request.context, *request.continuation, *self.scheme.lookahead]
        n_target = len(request.continuation)
        if self.max_length is not None and len(ids) - 1 > self.max_length:
            cut = len(ids) - 1 - self.max_length  # drop this many context ids after the start id
            if cut > len(request.context):
                if self.strict_length:
                    raise BolmoError(f"a continuation of {n_target} ids does not fit max_length {self.max_length}")
                # One message per model (no per-request numbers), so a warning filter shows it once.
                warn(f"a continuation is longer than the model's context ({self.model.config.context_positions:,} "
                     "positions): scored without its context, past that context", ContextWarning)
                cut = len(request.context)
            ids = ids[:1] + ids[1 + cut:]
        first = len(ids) - len(self.scheme.lookahead) - n_target  # position of the first continuation id
        return ids[:-1], first, list(request.continuation)

    @torch.inference_mode()
    def score(self, requests: Sequence[IdRequest],
              progress: Callable[[int], None] | None = None) -> list[Loglikelihood]:
        """Log-likelihood of every request, in the order given."""
        rows = [self.row(r) for r in requests]
        cut = sum(len(ids) < len(r.context) + len(r.continuation) + len(self.scheme.lookahead)
                  for r, (ids, _, _) in zip(requests, rows))
        if cut:
            limit = (f"max_length {self.max_length:,}" if self.strict_length
                     else f"the model's context ({self.model.config.context_positions:,} positions)")
            warn(f"{cut:,} of {len(requests):,} requests are longer than {limit}: their contexts were cut from the "
                 "left, as lm-eval's hf model does (few-shot examples are lost first)", ContextWarning)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: list[Loglikelihood | None] = [None] * len(rows)
        device = self.model.device
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = len(rows[chunk[0]][0])
            ids = torch.full((len(chunk), width), self.scheme.pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.bool)
            for b, i in enumerate(chunk):
                ids[b, : len(rows[i][0])] = torch.tensor(rows[i][0])
                mask[b, : len(rows[i][0])] = True
            logits = self.model(ids.to(device), attention_mask=mask.to(device)).logits
            for b, i in enumerate(chunk):
                _, first, continuation = rows[i]
                if not continuation:
                    results[i] = Loglikelihood(0.0, True, 0)
                    continue
                targets = torch.tensor(continuation, device=device)
                # logits[t] predicts id t + 1
                logprobs, argmax = self.scheme.logprobs(logits[b, first - 1 : first - 1 + len(continuation)], targets)
                results[i] = Loglikelihood(float(logprobs.double().sum()), bool((argmax == targets).all()),
                                           len(targets))
            if progress is not None:
                progress(len(chunk))
        return results  # type: ignore[return-value]

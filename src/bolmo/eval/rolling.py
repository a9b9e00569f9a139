"""Log-likelihood of whole documents (lm-eval's `loglikelihood_rolling`, Paloma's bits per byte).

A document longer than one window is scored in windows: the first predicts its first `window`
ids from the start id alone; each later one predicts the next `window - overlap` ids, seeing the
`overlap` ids before them as context. Every id is predicted exactly once, so the sum over windows
is the document's log-likelihood under that context limit.

Windows fit the model: by default DEFAULT_WINDOW ids, or fewer where the checkpoint's context is
shorter (its positions - 1), with DEFAULT_OVERLAP or half a shorter window as overlap
(`model_window`). `model.score` uses windows of the whole context with half of it as context
(`bolmo.scoring.window_ids`), so the two agree exactly for models of at most 1,025 ids of
context (the bundled ones) and for documents within one window; a released Bolmo (65,536
positions) scores long documents in 2,048-id windows here, in 65,535-id ones in `model.score`.
A window asked for beyond the context is scored with a ContextWarning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


from bolmo.errors import BolmoError, ContextWarning, warn
from bolmo.eval.engine import IdRequest, Scorer
from bolmo.scoring import default_context
from bolmo.scoring import windows as scoring_windows

DEFAULT_WINDOW = 2048
DEFAULT_OVERLAP = 512


def default_overlap(window: int) -> int:
    """DEFAULT_OVERLAP, or `bolmo.scoring`'s default context (half the window) when that is less."""
    return min(DEFAULT_OVERLAP, default_context(window))


def model_window(model, window: int | None = None, overlap: int | None = None) -> tuple[int, int]:
    """(window, overlap) for scoring with `model`: None picks the defaults, capped to the ids its
    context holds after the start id (positions - 1; uncapped where the checkpoint does not say).
    A window given beyond the context is kept, with a ContextWarning (its scores extrapolate)."""
    positions = model.config.context_positions
    if window is None:
        window = DEFAULT_WINDOW if positions is None else max(1, min(DEFAULT_WINDOW, positions - 1))
    elif positions is not None and window > positions - 1:
        warn(f"a window of {window:,} ids is longer than the model's context ({positions:,} positions): "
             "its later ids are scored past the positions the model was trained on", ContextWarning)
    return window, default_overlap(window) if overlap is None else overlap


@dataclass(frozen=True)
class DocumentScore:
    logprob: float  # nats, the whole document
    n_bytes: int  # UTF-8 bytes

    @property
    def bits_per_byte(self) -> float:
        return -self.logprob / math.log(2) / self.n_bytes if self.n_bytes else float("nan")


def windows(n: int, window: int, overlap: int) -> list[tuple[int, int, int]]:
    """(context start, target start, target end) spans covering ids [0, n) exactly once: the cut of
    `bolmo.scoring.windows`, with `overlap` as its context."""
    if window < 1 or not 0 <= overlap < window:
        raise BolmoError(f"need window >= 1 and 0 <= overlap < window, got window {window}, overlap {overlap}")
    return [(w.start, w.scored_from, w.end) for w in scoring_windows(n, window, overlap) if w.end > w.start]


def score_documents(scorer: Scorer, texts: Sequence[str], window: int | None = None,
                    overlap: int | None = None,
                    progress: Callable[[int], None] | None = None) -> list[DocumentScore]:
    """The log-likelihood of each text (after the start id), windows as described above (None:
    `model_window`'s defaults for the scorer's model; values given are used as they are). All
    windows of all documents are scored as one batched request list."""
    if window is None or overlap is None:
        window, overlap = model_window(scorer.model, window, overlap)
    requests: list[IdRequest] = []
    owner: list[int] = []
    for doc, text in enumerate(texts):
        ids = scorer.scheme.encode(text)
        for ctx_start, start, end in windows(len(ids), window, overlap):
            requests.append(IdRequest(tuple(ids[ctx_start:start]), tuple(ids[start:end])))
            owner.append(doc)
    totals = [0.0] * len(texts)
    for doc, result in zip(owner, scorer.score(requests, progress)):
        totals[doc] += result.logprob
    return [DocumentScore(total, len(text.encode("utf-8"))) for total, text in zip(totals, texts)]

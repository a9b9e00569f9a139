"""Log-likelihood of whole documents (lm-eval's `loglikelihood_rolling`, Paloma's bits per byte).

A document longer than one window is scored in windows: the first predicts its first `window`
ids from the start id alone; each later one predicts the next `window - overlap` ids, seeing the
`overlap` ids before them as context. Every id is predicted exactly once, so the sum over windows
is the document's log-likelihood under that context limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bolmo.errors import BolmoError
from bolmo.eval.engine import IdRequest, Scorer

DEFAULT_WINDOW = 2048
DEFAULT_OVERLAP = 512


@dataclass(frozen=True)
class DocumentScore:
    logprob: float  # nats, the whole document
    n_bytes: int  # UTF-8 bytes

    @property
    def bits_per_byte(self) -> float:
        return -self.logprob / math.log(2) / self.n_bytes if self.n_bytes else float("nan")


def windows(n: int, window: int, overlap: int) -> list[tuple[int, int, int]]:
    """(context start, target start, target end) spans covering ids [0, n) exactly once."""
    if window < 1 or not 0 <= overlap < window:
        raise BolmoError(f"need window >= 1 and 0 <= overlap < window, got window {window}, overlap {overlap}")
    spans = [(0, 0, min(n, window))] if n else []
    end = spans[0][2] if spans else 0
    while end < n:
        new_end = min(n, end + window - overlap)
        spans.append((end - overlap, end, new_end))
        end = new_end
    return spans


def score_documents(scorer: Scorer, texts: Sequence[str], window: int = DEFAULT_WINDOW,
                    overlap: int = DEFAULT_OVERLAP,
                    progress: Callable[[int], None] | None = None) -> list[DocumentScore]:
    """The log-likelihood of each text (after the start id), windows as described above. All
    windows of all documents are scored as one batched request list."""
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

"""Paloma-style bits per byte: every document scored on its own, totals per source and overall.

A source's (and the overall) bits per byte is its total negative log-likelihood over its total
bytes, so long documents weigh by their length; `macro` is the plain mean over sources (Paloma's
way of keeping one large source from drowning the others).

Empty documents are not scored (no bytes to divide by): they are skipped with a warning and listed
under "skipped_empty"; a source with nothing else reports `bits_per_byte` None (JSON null), and a
corpus of only empty documents is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from bolmo.errors import warn
from bolmo.eval.documents import Document
from bolmo.eval.engine import Scorer
from bolmo.eval.rolling import score_documents
from bolmo.scoring import empty_text_error


def _bpb(nats: float, n_bytes: int) -> float | None:
    return nats / math.log(2) / n_bytes if n_bytes else None


def _names(ids: Sequence[str], shown: int = 3) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def split_empty(docs: Sequence[Document]) -> tuple[list[Document], list[str]]:
    """(the documents with text, the ids of the empty ones), warning about those skipped; refuses a
    corpus with nothing to score."""
    empty = [d.doc_id for d in docs if not d.text]
    if empty and len(empty) == len(docs):
        raise empty_text_error(_names(empty))
    if empty:
        warn(f"skipped {len(empty)} empty document(s), nothing to score: {_names(empty)}")
    return [d for d in docs if d.text], empty


def bits_per_byte(scorer: Scorer, docs: Sequence[Document], window: int | None = None,
                  overlap: int | None = None, progress: Callable[[int], None] | None = None) -> dict:
    """{"documents": [...], "sources": {source: {...}}, "overall": {...}, "macro": float, "skipped_empty": [...]}.
    Every source of `docs` is listed, even one whose documents were all empty."""
    scored, empty = split_empty(docs)
    scores = score_documents(scorer, [d.text for d in scored], window, overlap, progress)
    documents = []
    totals: dict[str, list[float]] = {d.source: [0.0, 0, 0] for d in docs}
    for doc, score in zip(scored, scores):
        nats = -score.logprob
        documents.append({"id": doc.doc_id, "source": doc.source, "bytes": score.n_bytes, "nats": nats,
                          "bits_per_byte": _bpb(nats, score.n_bytes)})
        total = totals[doc.source]
        total[0] += nats
        total[1] += score.n_bytes
        total[2] += 1
    sources = {name: {"documents": n, "bytes": b, "nats": nats, "bits_per_byte": _bpb(nats, b)}
               for name, (nats, b, n) in totals.items()}
    all_nats = sum(d["nats"] for d in documents)
    all_bytes = sum(d["bytes"] for d in documents)
    per_source = [s["bits_per_byte"] for s in sources.values() if s["bytes"]]
    return {"documents": documents, "sources": sources,
            "overall": {"documents": len(documents), "bytes": all_bytes, "nats": all_nats,
                        "bits_per_byte": _bpb(all_nats, all_bytes)},
            "macro": sum(per_source) / len(per_source),
            "skipped_empty": empty}

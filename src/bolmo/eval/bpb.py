"""Paloma-style bits per byte: every document scored on its own, totals per source and overall.

A source's (and the overall) bits per byte is its total negative log-likelihood over its total
bytes, so long documents weigh by their length; `macro` is the plain mean over sources (Paloma's
way of keeping one large source from drowning the others).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from bolmo.eval.documents import Document
from bolmo.eval.engine import Scorer
from bolmo.eval.rolling import DEFAULT_OVERLAP, DEFAULT_WINDOW, score_documents


def _bpb(nats: float, n_bytes: int) -> float:
    return nats / math.log(2) / n_bytes if n_bytes else float("nan")


def bits_per_byte(scorer: Scorer, docs: Sequence[Document], window: int = DEFAULT_WINDOW,
                  overlap: int = DEFAULT_OVERLAP, progress: Callable[[int], None] | None = None) -> dict:
    """{"documents": [...], "sources": {source: {...}}, "overall": {...}, "macro": float}."""
    scores = score_documents(scorer, [d.text for d in docs], window, overlap, progress)
    documents = []
    totals: dict[str, list[float]] = {}
    for doc, score in zip(docs, scores):
        nats = -score.logprob
        documents.append({"id": doc.doc_id, "source": doc.source, "bytes": score.n_bytes, "nats": nats,
                          "bits_per_byte": _bpb(nats, score.n_bytes)})
        total = totals.setdefault(doc.source, [0.0, 0, 0])
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
            "macro": sum(per_source) / len(per_source) if per_source else float("nan")}

"""The metrics OLMo reports for its tasks, from per-choice log-likelihoods.

Ranked classification (rc/mc tasks): the prediction is the choice with the highest score (first
one on ties) where the score is the summed log-likelihood (`acc_raw`), divided by the
continuation's characters (`acc_per_char`) or UTF-8 bytes (`acc_per_byte`); lengths count the
continuation as written in the request, leading space included (the OLMES standard), or by its
ids as the model scored them (`acc_per_token`: tokens for a subword model, bytes for Bolmo).
`acc_uncond` (olmes', for tasks whose request files hold unconditional requests) ranks the
choices by log-likelihood minus their log-likelihood after the bare `Answer:`.
`bits_per_byte` is -log-likelihood / (ln 2 x bytes) of the gold continuation, averaged over
documents. The bits-per-byte task variants score only the gold continuation: `bits_per_byte`, and
`greedy_acc`, the share of documents whose gold continuation is the model's greedy one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from bolmo.eval.engine import Loglikelihood
from bolmo.eval.olmes import Task

def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def task_metrics(task: Task, results: Sequence[Sequence[Loglikelihood]]) -> dict[str, float]:
    """results[d]: the log-likelihood (nats) and greediness of each choice of document d, then of
    each of its unconditional requests (Document.unconditional)."""
    n = len(task.documents)
    if n == 0:
        return {}
    with_uncond = all(doc.unconditional for doc in task.documents)
    correct = {"acc_raw": 0, "acc_per_char": 0, "acc_per_byte": 0, "acc_per_token": 0, "acc_uncond": 0}
    bpb, greedy = 0.0, 0
    for doc, result in zip(task.documents, results):
        scores = [r.logprob for r in result[:len(doc.choices)]]
        conts = [c.continuation for c in doc.choices]
        n_bytes = [max(len(c.encode("utf-8")), 1) for c in conts]
        bpb += -scores[doc.label] / math.log(2) / n_bytes[doc.label]
        if task.is_bpb:
            greedy += result[doc.label].is_greedy
            continue
        correct["acc_raw"] += _argmax(scores) == doc.label
        correct["acc_per_char"] += _argmax([s / max(len(c), 1) for s, c in zip(scores, conts)]) == doc.label
        correct["acc_per_byte"] += _argmax([s / b for s, b in zip(scores, n_bytes)]) == doc.label
        n_ids = [max(r.n_ids, 1) for r in result[:len(doc.choices)]]
        correct["acc_per_token"] += _argmax([s / t for s, t in zip(scores, n_ids)]) == doc.label
        if with_uncond:
            uncond = [r.logprob for r in result[len(doc.choices):]]
            correct["acc_uncond"] += _argmax([s - u for s, u in zip(scores, uncond)]) == doc.label
    if task.is_bpb:
        return {"bits_per_byte": bpb / n, "greedy_acc": greedy / n}
    if not with_uncond:
        del correct["acc_uncond"]
    return {**{k: v / n for k, v in correct.items()}, "bits_per_byte": bpb / n}

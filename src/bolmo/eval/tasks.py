"""`bolmo eval run`: score OLMo task files with one model and compute each task's metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bolmo.eval.engine import Scorer
from bolmo.eval.metrics import task_metrics
from bolmo.eval.olmes import Task


def task_pairs(task: Task) -> list[tuple[str, str]]:
    """Every (context, continuation) request of the task, document by document: its choices,
    then their unconditional requests."""
    return [(c.context, c.continuation) for doc in task.documents for c in doc.choices + doc.unconditional]


def evaluate_tasks(scorer: Scorer, tasks: Sequence[Task],
                   progress: Callable[[int], None] | None = None) -> dict[str, dict[str, float]]:
    """Task name -> metrics. All tasks' requests go through the scorer as one list, so batches
    fill up across task boundaries (results never depend on batching)."""
    pairs = [pair for task in tasks for pair in task_pairs(task)]
    results = iter(scorer.loglikelihood(pairs, progress))
    out = {}
    for task in tasks:
        per_doc = [[next(results) for _ in doc.choices + doc.unconditional] for doc in task.documents]
        out[task.name] = task_metrics(task, per_doc)
    return out

# python benchmarks/eval.py [--reference ../shared/reference] [--task arc_easy_rc_5shot] [--docs 8] [--batch 16]
"""Evaluation throughput: requests/s scoring a multiple-choice OLMo task (olmes' hf_bolmo
loglikelihood protocol) at batch 1 and at the default batch, with the fixture model, against the
reference implementation in the same run (right-padded batches with an attention mask).

Also reported: the largest difference between a request's batched value and its batch-1 value
(bolmo's rows are independent, so it should be 0 up to float rounding)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import FIXTURE_MODEL, ROOT, fixture_model, report
from reference import DEFAULT_PYTHON

from bolmo.eval.engine import Scorer
from bolmo.eval.olmes import load_task
from bolmo.eval.tasks import task_pairs

def reference_run(reference: Path, scorer: Scorer, pairs: list[tuple[str, str]], batches: list[int]) -> dict | None:
    """The same id rows scored by the reference (checkout `reference`) in its own venv, or None
    when that venv is not set up."""
    if not DEFAULT_PYTHON.exists():
        print(f"no reference venv at {DEFAULT_PYTHON} (run the reference's setup.sh): bolmo only", file=sys.stderr)
        return None
    rows, targets = [], []
    for context, continuation in pairs:
        ids, first, cont = scorer.row(scorer.encode_pair(context, continuation))
        rows.append(ids)
        targets.append([first, cont])
    env = dict(os.environ, PYTHONPATH=str(reference), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run([str(DEFAULT_PYTHON), str(ROOT / "benchmarks" / "eval_reference.py"), str(FIXTURE_MODEL),
                           *map(str, batches)], input=json.dumps({"rows": rows, "targets": targets}),
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="arc_easy_rc_5shot")
    parser.add_argument("--docs", type=int, default=8, help="documents of the task (4 requests each for ARC)")
    parser.add_argument("--batch", type=int, default=16, help="the default batch size of `bolmo eval`")
    parser.add_argument("--reference", type=Path, default=None,
                        help="checkout of the reference implementation (e.g. ../shared/reference); default: bolmo only")
    args = parser.parse_args()

    model = fixture_model()
    pairs = task_pairs(load_task(args.task, args.docs))
    batches = [1, args.batch]
    values: dict[int, list[float]] = {}
    rows = []
    for batch in batches:
        scorer = Scorer(model, batch_size=batch)
        scorer.loglikelihood(pairs[:2])  # warm-up
        start = time.perf_counter()
        values[batch] = [r.logprob for r in scorer.loglikelihood(pairs)]
        seconds = time.perf_counter() - start
        rows.append({"implementation": "bolmo", "batch": batch, "requests": len(pairs), "seconds": round(seconds, 3),
                     "requests_per_s": len(pairs) / seconds,
                     "max_diff_vs_batch_1": max(abs(a - b) for a, b in zip(values[batch], values[1]))})
    if args.reference is None:
        print("no --reference given: timing bolmo only", file=sys.stderr)
    reference = None if args.reference is None else reference_run(args.reference, Scorer(model), pairs, batches)
    if reference is not None:
        for batch in batches:
            ref = reference[str(batch)]
            rows.append({"implementation": "reference", "batch": batch, "requests": len(pairs),
                         "seconds": round(ref["seconds"], 3), "requests_per_s": len(pairs) / ref["seconds"],
                         "max_diff_vs_batch_1": max(abs(a - b) for a, b in zip(ref["logprobs"],
                                                                               reference["1"]["logprobs"]))})
        agreement = max(abs(a - b) for a, b in zip(values[1], reference["1"]["logprobs"]))
        print(f"bolmo vs reference at batch 1: max |delta logprob| = {agreement:.2e}")
    for row in rows:
        row["max_diff_vs_batch_1"] = f"{row['max_diff_vs_batch_1']:.2e}"
    report("eval", rows, ["implementation", "batch", "requests", "seconds", "requests_per_s", "max_diff_vs_batch_1"],
           {"task": args.task, "documents": args.docs, "model": "fixture tiny-gqa", "device": "cpu",
            "reference": reference is not None})


if __name__ == "__main__":
    main()

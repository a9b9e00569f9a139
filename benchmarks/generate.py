# python benchmarks/generate.py [--models fixture 1b-local] [--lengths 128 512 2048] [--batches 1 8] [--threads N] [--temperature T] [--name generate]
"""Generation throughput of the cached engine (bolmo.generation): new bytes per second at batch 1
and 8, for the fixture model and for a random model with Bolmo-1B's local sizes (d 2048, 1
encoder + 4 decoder mLSTM layers, local FF 2816, expanded embeddings through the fixture's subword
tokenizer) and 2 global layers.

Decode steps are timed one by one and split into local-only steps (no row closed a patch: encoder
and decoder steps) and global steps (some row closed a patch: the global layers run too, with
attention over every cached patch). Per-step cost must not grow with the amount generated: the
`*_vs_first` columns give each kind's mean step time relative to the shortest run of the same
model and batch (1.00 = flat). The plain per-byte ratio (`step_vs_first`) also moves with how often
the model closes patches (`bytes_per_patch`), which for random weights drifts as a run goes on.

The special ids' LM-head rows of the random model are zeroed like the fixtures' so that no row
stops early at EOS; `generated` reports the bytes actually generated.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field

import torch

from bolmo.generation import GenerateOptions, decode
from common import bolmo_1b_local_config, fixture_model, random_model, report

PROMPTS = [
    "The quick brown fox jumps over the lazy dog while the committee reviews the budget. ",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Byte-level models read text one byte at a time, so spelling is visible to them. ",
    "Größe 大小 😀 naïve café — ",
    "Once upon a time, there was a small model that liked to count patches. ",
    "import numpy as np\nx = np.arange(10)\n",
    "In 1969 the first message sent over ARPANET was 'lo'. ",
    "Q: What is the capital of France?\nA:",
]


def build(name: str):
    if name == "fixture":
        return "tiny-gqa", fixture_model()
    model = random_model(bolmo_1b_local_config())
    with torch.no_grad():  # no early EOS, no special ids: the fixtures' convention
        model.lm_head.weight[[0, 1, 2, 3, 260, 261, 262, 263]] = 0.0
    return "1B-local", model


@dataclass
class Timing:
    prefill_s: float
    step_s: list[float] = field(default_factory=list)  # wall time of every decode step
    global_step: list[bool] = field(default_factory=list)  # did the global model run in that step
    new_bytes: int = 0
    new_patches: int = 0

    @property
    def seconds(self) -> float:
        return self.prefill_s + sum(self.step_s)

    def mean_ms(self, kind: bool | None = None) -> float:
        """Mean step time in ms: all steps (None), global steps (True) or local-only steps (False)."""
        times = [t for t, g in zip(self.step_s, self.global_step) if kind is None or g == kind]
        return 1e3 * sum(times) / len(times) if times else math.nan


def timed_run(model, prompts: list[str], options: GenerateOptions) -> Timing:
    """Time the prefill and every decode step of one generation."""
    start = time.perf_counter()
    steps = decode(model, prompts, options)
    rows = next(steps)  # after the prefill and the first new byte
    timing = Timing(prefill_s=time.perf_counter() - start)
    while not all(r.done for r in rows):
        # A step feeds each running row's latest id; the global model runs if any of them closed a patch.
        timing.global_step.append(any((r.boundaries or r.prompt_boundaries or [True])[-1]
                                      for r in rows if not r.done))
        start = time.perf_counter()
        rows = next(steps)
        timing.step_s.append(time.perf_counter() - start)
    timing.new_bytes = sum(len(r.continuation.data) for r in rows)
    timing.new_patches = sum(sum(r.boundaries) for r in rows)
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fixture", "1b-local"], choices=["fixture", "1b-local"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--name", default="generate", help="results file: benchmarks/results/NAME.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for name in args.models:
        label, model = build(name)

        def run(batch: int, n: int) -> Timing:
            seed = 0 if args.temperature else None
            return timed_run(model, PROMPTS[:batch], GenerateOptions.build(n, args.temperature, seed=seed))

        run(1, 16)  # warm-up: first-call allocations and lazy initialisation
        for batch in args.batches:
            first: dict[bool | None, float] = {}  # first run's mean step time per kind (that has one)
            for n in sorted(args.lengths):
                t = run(batch, n)
                ms = {kind: t.mean_ms(kind) for kind in (None, False, True)}
                for kind, value in ms.items():
                    if not math.isnan(value):
                        first.setdefault(kind, value)
                rows.append({
                    "model": label, "batch": batch, "new_bytes": n, "generated": t.new_bytes,
                    "seconds": round(t.seconds, 3), "prefill_s": round(t.prefill_s, 3),
                    "bytes_per_s": t.new_bytes / t.seconds, "ms_per_step": ms[None],
                    "bytes_per_patch": t.new_bytes / max(t.new_patches, 1),
                    "local_step_ms": ms[False], "global_step_ms": ms[True],
                    **{f"{name}_vs_first": f"{ms[kind] / first.get(kind, math.nan):.2f}"
                       for name, kind in (("step", None), ("local", False), ("global", True))},
                })
        del model
    report(args.name, rows, ["model", "batch", "new_bytes", "bytes_per_s", "ms_per_step", "bytes_per_patch",
                             "local_step_ms", "global_step_ms", "step_vs_first", "local_vs_first",
                             "global_vs_first"],
           {"device": "cpu", "dtype": "float32", "temperature": args.temperature, "prompts": "PROMPTS[:batch]",
            "threads": torch.get_num_threads(), "lengths": sorted(args.lengths),
            "note": "the engine decodes models narrower than 1024 on one CPU thread (bolmo.generation.bolmo_engine.cpu_threads)"})


if __name__ == "__main__":
    main()

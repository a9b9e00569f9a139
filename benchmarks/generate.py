# python benchmarks/generate.py [--reference ../shared/reference] [--models d256 fixture 1b-local] [--lengths 128 512 2048]
#                               [--batches 1 32] [--engines eager compiled] [--repeats 3] [--threads 1]
#                               [--reference-threads 1 2] [--one-at-a-time] [--name generate]
"""Generation throughput of the cached engine (bolmo.generation), against the reference
implementation in the same run.

Models: `d256`, the random Bolmo of issue 15 (d_model 256, 4 global layers, 1 encoder + 4 decoder
mLSTM layers with 2 heads, local MLP 352, a 1,000-entry subword table); `fixture` (the tiny-gqa
test model); `1b-local` (Bolmo-1B's local sizes with 2 global layers). Prompt "Language modeling
is " at batch 1; at larger batches, prompts of mixed lengths (every row is checked to equal its
prompt generated alone, at the shortest length). At larger batches `vs_batch_1` is the aggregate
bytes/s against batch 1's (the short prompt alone) and `vs_one_at_a_time` against the same prompts
generated alone one after the other (the batch's own workload, prefills included: eager at the
shortest length, every engine and length with `--one-at-a-time`). Greedy. Engines: `eager` (the fused step
kernels) and `compiled` (the same under torch.compile; its compilation is timed separately).

With `--reference PATH` (a checkout of the reference code with its venv, see
benchmarks/reference.py) the reference generates the same bytes from the same random weights
in a subprocess, interleaved with bolmo's runs: best of `--repeats` each, same thread count
(`--reference-threads 1 2` runs it at each count, and `vs_reference` is then against its fastest).

Decode steps are timed one by one and split into local-only steps and steps that also run the
global model; `local_vs_first` / `global_vs_first` give each kind's mean step time relative to the
shortest run (1.00 = flat: the cost of a step does not grow with what was generated).
The special ids' LM-head rows of random models are zeroed like the fixtures' (no early EOS).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bolmo.config import BYTE_OFFSET, BolmoConfig
from bolmo.generation import GenerateOptions, decode
from bolmo.generation.compiled import COMPILE_ENV
from common import FIXTURE_MODEL, bolmo_1b_local_config, fixture_model, random_model, report, stream_bandwidth
from reference import add_allocator_argument

PROMPT = "Language modeling is "
TEXTS = [
    "The quick brown fox jumps over the lazy dog while the committee reviews the budget. ",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Byte-level models read text one byte at a time, so spelling is visible to them. ",
    "Größe 大小 😀 naïve café — ",
    "Once upon a time, there was a small model that liked to count patches. ",
    "import numpy as np\nx = np.arange(10)\n",
    "In 1969 the first message sent over ARPANET was 'lo'. ",
    "Q: What is the capital of France?\nA:",
]


def batch_prompts(batch: int) -> list[str]:
    """`batch` prompts of mixed lengths (3 to ~250 bytes), PROMPT alone at batch 1."""
    if batch == 1:
        return [PROMPT]
    return [(TEXTS[i % len(TEXTS)] * 4)[: 3 + (37 * i) % 250] for i in range(batch)]


def d256_config() -> BolmoConfig:
    config = BolmoConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                         num_local_heads=2, local_intermediate_size=352, num_local_encoder_layers=1,
                         num_local_decoder_layers=4, subword_vocab_size=1000)
    config.tokenizer_config.original_identifier = str(FIXTURE_MODEL / "subword_tokenizer")
    return config


def build(name: str):
    if name == "fixture":
        return "tiny-gqa", fixture_model()
    model = random_model(d256_config() if name == "d256" else bolmo_1b_local_config())
    with torch.no_grad():  # no early EOS, no special ids: the fixtures' convention
        model.lm_head.weight[[0, 1, 2, 3, 260, 261, 262, 263]] = 0.0
    return ("d256" if name == "d256" else "1B-local"), model


@dataclass
class Timing:
    prefill_s: float
    step_s: list[float] = field(default_factory=list)  # wall time of every decode step
    global_step: list[bool] = field(default_factory=list)  # did the global model run in that step
    new_bytes: int = 0
    new_patches: int = 0
    data: list[bytes] = field(default_factory=list)  # every row's new bytes

    @property
    def seconds(self) -> float:
        return self.prefill_s + sum(self.step_s)

    @property
    def bytes_per_s(self) -> float:
        return self.new_bytes / self.seconds

    def mean_ms(self, kind: bool | None = None) -> float:
        """Mean step time in ms: all steps (None), global steps (True) or local-only steps (False)."""
        times = [t for t, g in zip(self.step_s, self.global_step) if kind is None or g == kind]
        return 1e3 * sum(times) / len(times) if times else math.nan


LOCAL_COMPONENTS = ("encoder mLSTM layers", "encoder norm + out_projection", "decoder initial_norm + in_projection",
                    "decoder mLSTM layers", "final norm", "lm_head")


def weight_bytes_per_step(model, global_fraction: float) -> float:
    """Bytes of weights a batch-1 decode step reads: every local layer and the LM head, plus the
    global transformer in the fraction of steps that run it (embeddings: one row, ignored)."""
    counts = model.num_parameters_by_component()
    size = model.lm_head.weight.element_size()
    return size * (sum(counts[c] for c in LOCAL_COMPONENTS) + global_fraction * counts["global transformer"])


def same_prefix(a: bytes, b: bytes) -> bool:
    """Equal over their common length (the reference cannot be asked for fewer new bytes than
    its prompt has ids minus 3, so at short lengths it returns more)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


# The driver's row objects, read in one place.
def new_data(row) -> bytes:
    return bytes(row.continuation.data)


def new_boundaries(row) -> list[bool]:
    return row.boundaries


def closed_patch(row) -> bool:
    """Did the id the row was last fed end a patch (so the global model ran)? (A lone BOS ends one.)"""
    return (row.boundaries or row.prompt_boundaries or [True])[-1]


def timed_run(model, prompts: list[str], n: int, compiled: bool) -> Timing:
    """Time the prefill and every decode step of one greedy generation."""
    os.environ[COMPILE_ENV] = "1" if compiled else "0"
    start = time.perf_counter()
    steps = decode(model, prompts, GenerateOptions.build(n))
    rows = next(steps)  # after the prefill and the first new byte
    timing = Timing(prefill_s=time.perf_counter() - start)
    while not all(r.done for r in rows):
        start = time.perf_counter()
        rows = next(steps)
        timing.step_s.append(time.perf_counter() - start)
        # A step samples each row's next id, then feeds it to the rows still running: the global
        # model ran if one of those ids closed a patch.
        timing.global_step.append(any(closed_patch(r) for r in rows if not r.done))
    timing.data = [new_data(r) for r in rows]
    timing.new_bytes = sum(len(d) for d in timing.data)
    timing.new_patches = sum(sum(new_boundaries(r)) for r in rows)
    return timing


def one_at_a_time(model, prompts: list[str], n: int, compiled: bool) -> tuple[list[bytes], float]:
    """The same prompts generated alone, one after the other: every row's new bytes and the
    aggregate bytes/s (prefills included), the batch-1 throughput on the batch's own workload."""
    runs = [timed_run(model, [p], n, compiled) for p in prompts]
    return [r.data[0] for r in runs], sum(r.new_bytes for r in runs) / sum(r.seconds for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=None,
                        help="checkout of the reference implementation (e.g. ../shared/reference); default: bolmo only")
    parser.add_argument("--models", nargs="+", default=["d256"], choices=["d256", "fixture", "1b-local"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--reference-lengths", type=int, nargs="+", default=[512],
                        help="lengths the reference runs (batch 1)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--engines", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per figure")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (bolmo; the reference too by default)")
    parser.add_argument("--reference-threads", type=int, nargs="+", default=None,
                        help="thread counts to run the reference with (one worker each, interleaved); "
                             "vs_reference is against the fastest of them (default: --threads)")
    parser.add_argument("--bandwidth", action="store_true",
                        help="measure memory bandwidth and report batch-1 decoding as a fraction of its bound")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="at batches > 1, also generate the batch's prompts alone, one after the other, at "
                             "every length and with every engine, for vs_one_at_a_time (default: eager, shortest "
                             "length only, to check that every row equals its prompt alone)")
    parser.add_argument("--name", default="generate", help="results file: benchmarks/results/NAME.json")
    add_allocator_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.reference is None:
        print("no --reference given: timing bolmo only (pass --reference ../shared/reference for the ratio)")

    bandwidth = stream_bandwidth() if args.bandwidth else None
    rows: list[dict] = []
    for name in args.models:
        label, model = build(name)
        references = {}  # thread count -> worker
        if args.reference is not None:
            from reference import Reference, save_hf

            workdir = Path(tempfile.mkdtemp(prefix=f"bolmo-bench-{label}-"))
            save_hf(model, workdir)
            for threads in args.reference_threads or [args.threads]:
                references[threads] = Reference(args.reference, workdir, threads, allocator=args.reference_allocator)
                references[threads].generate([model.tokenizer.encode(PROMPT)], 8)  # warm-up
        compile_s = math.nan
        for engine in args.engines:  # warm-up; for the compiled engine this is the compilation
            start = time.perf_counter()
            timed_run(model, [PROMPT], 8, engine == "compiled")
            if engine == "compiled":
                compile_s = time.perf_counter() - start
        for batch in args.batches:
            prompts = batch_prompts(batch)
            first: dict[tuple[str, bool | None], float] = {}
            for n in sorted(args.lengths):
                best: dict[str, Timing] = {}
                ref_best = {threads: math.inf for threads in references}
                ref_ids = None
                run_reference = bool(references) and batch == 1 and n in args.reference_lengths
                for _ in range(args.repeats):  # interleaved: reference(s), then each bolmo engine
                    for threads, reference in references.items() if run_reference else ():
                        reply = reference.generate([model.tokenizer.encode(PROMPT)], n)
                        ref_best[threads], ref_ids = min(ref_best[threads], reply["seconds"]), reply["new_ids"][0]
                    for engine in args.engines:
                        t = timed_run(model, prompts, n, engine == "compiled")
                        if engine not in best or t.seconds < best[engine].seconds:
                            best[engine] = t
                eager_data = best[args.engines[0]].data
                for threads, seconds in ref_best.items() if run_reference else ():
                    rows.append({"model": label, "engine": "reference", "threads": threads, "batch": 1, "new_bytes": n,
                                 "bytes_per_s": len(ref_ids) / seconds, "ms_per_step": 1e3 * seconds / len(ref_ids),
                                 "same_bytes": same_prefix(bytes(i - BYTE_OFFSET for i in ref_ids), eager_data[0])})
                alone, sequential = "", {}  # engine -> bytes/s of the same prompts one at a time
                if batch > 1 and (args.one_at_a_time or n == min(args.lengths)):
                    for engine in args.engines if args.one_at_a_time else args.engines[:1]:
                        data, sequential[engine] = one_at_a_time(model, prompts, n, engine == "compiled")
                        alone = alone is not False and data == eager_data  # every row equals its prompt alone
                for engine, t in best.items():
                    ms = {kind: t.mean_ms(kind) for kind in (None, False, True)}
                    for kind, value in ms.items():
                        if not math.isnan(value):
                            first.setdefault((engine, kind), value)
                    row = {"model": label, "engine": engine, "threads": args.threads, "batch": batch, "new_bytes": n,
                           "bytes_per_s": t.bytes_per_s, "ms_per_step": ms[None],
                           "local_step_ms": ms[False], "global_step_ms": ms[True],
                           "bytes_per_patch": t.new_bytes / max(t.new_patches, 1),
                           "same_bytes": t.data == eager_data, "rows_equal_alone": alone,
                           "local_vs_first": round(ms[False] / first.get((engine, False), math.nan), 2),
                           "global_vs_first": round(ms[True] / first.get((engine, True), math.nan), 2)}
                    if batch == 1 and bandwidth:  # the memory-bandwidth bound of batch-1 decoding
                        per_byte = weight_bytes_per_step(model, sum(t.global_step) / len(t.global_step))
                        row["weight_mb_per_byte"] = round(per_byte / 1e6, 1)
                        row["bandwidth_fraction"] = round(per_byte * t.bytes_per_s / 1e9 / bandwidth, 2)
                    if run_reference:  # against the reference's fastest thread count
                        row["vs_reference"] = round(t.bytes_per_s * min(ref_best.values()) / len(ref_ids), 2)
                    if batch > 1:
                        single = next((r for r in rows if r["model"] == label and r["engine"] == engine
                                       and r["batch"] == 1 and r["new_bytes"] == n), None)
                        if single is not None:
                            row["vs_batch_1"] = round(t.bytes_per_s / single["bytes_per_s"], 2)
                        if engine in sequential:
                            row["vs_one_at_a_time"] = round(t.bytes_per_s / sequential[engine], 2)
                    rows.append(row)
        for r in rows:
            if r["model"] == label and r["engine"] == "compiled":
                r["compile_s"] = round(compile_s, 1)
        for reference in references.values():
            reference.close()
        del model
    for r in rows:
        for column in ("vs_reference", "vs_batch_1", "vs_one_at_a_time", "compile_s", "weight_mb_per_byte",
                       "bandwidth_fraction",
                       "local_step_ms", "global_step_ms",
                       "bytes_per_patch", "rows_equal_alone", "local_vs_first", "global_vs_first"):
            r.setdefault(column, "")
    report(args.name, rows, ["model", "engine", "threads", "batch", "new_bytes", "bytes_per_s", "vs_reference", "vs_batch_1",
                             "vs_one_at_a_time",
                             "ms_per_step", "local_step_ms", "global_step_ms", "bytes_per_patch",
                             "local_vs_first", "global_vs_first", "same_bytes", "rows_equal_alone", "compile_s",
                             "weight_mb_per_byte", "bandwidth_fraction"],
           {"device": "cpu", "dtype": "float32", "greedy": True, "prompt": PROMPT, "threads": args.threads,
            "reference_threads": args.reference_threads or [args.threads],
            "repeats": args.repeats, "reference": str(args.reference) if args.reference else None,
            "reference_allocator": args.reference_allocator,
            "batch_prompts": "benchmarks/generate.py batch_prompts (mixed lengths)",
            "stream_bandwidth_gb_s": bandwidth})


if __name__ == "__main__":
    main()

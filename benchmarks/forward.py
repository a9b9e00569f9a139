# python benchmarks/forward.py [--reference ../shared/reference] [--models d256 fixture 1b-local] [--lengths 1000 8000]
#                              [--dtypes float32 bfloat16] [--repeats 3] [--threads N]
"""Forward-pass (scoring) throughput in bytes/s on CPU at batch 1, against the reference
implementation in the same run: the same random weights (saved as an HF directory and loaded by
the reference's own code in a subprocess), the same text (this repository's README, as bytes),
the same thread count, interleaved, best of `--repeats`. Both sides compute the subword
expansion inside the call (the reference always does); `expand_bytes_per_s` is that host-side
part alone. The reference runs float32 only (on a CPU its chunkwise mLSTM kernel fails in
bfloat16), so a bfloat16 row is timed against the reference's float32 forward, and
`bpb_vs_float32` says what the lower precision changes: the text's bits per byte under that dtype
minus under float32."""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, bolmo_1b_local_config, fixture_model, random_model, report
from generate import d256_config
from reference import add_allocator_argument

from bolmo.scoring import score_texts


def text_of(length: int) -> str:
    """The first `length` bytes of real text (the README, repeated if needed)."""
    data = (ROOT / "README.md").read_bytes()
    return (data * (length // len(data) + 1))[:length].decode("utf-8", errors="ignore")


def text_ids(model, length: int) -> torch.Tensor:
    """BOS + the first `length` bytes of real text."""
    return torch.tensor([model.tokenizer.encode(text_of(length))[: length + 1]])


def bits_per_byte(model, length: int) -> float:
    """The text's bits per byte under `model` (bolmo.scoring, the boundary decision folded in)."""
    return score_texts(model, [text_of(length)], batch_size=1)[0].bits_per_byte


def build(name: str, dtype: torch.dtype):
    if name == "fixture":
        return "tiny-gqa", fixture_model(dtype)
    if name == "d256":
        return "d256", random_model(d256_config(), dtype)
    return "1B-local", random_model(bolmo_1b_local_config(), dtype)


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference", type=Path, default=None,
                        help="checkout of the reference implementation (e.g. ../shared/reference); default: bolmo only")
    parser.add_argument("--models", nargs="+", default=["d256"], choices=["d256", "fixture", "1b-local"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 8000])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads, both sides (more than the idle cores makes OpenMP spin)")
    add_allocator_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threads = args.threads
    if args.reference is None:
        print("no --reference given: timing bolmo only (pass --reference ../shared/reference for the ratio)")

    rows = []
    for name in args.models:
        label, model_fp32 = build(name, torch.float32)
        reference = None
        if args.reference is not None:
            from reference import Reference, save_hf

            # float32 is the reference's only dtype on a CPU: its chunkwise mLSTM kernel fails in
            # bfloat16 there (a float32 state times a bfloat16 key), so every row is timed against it.
            workdir = Path(tempfile.mkdtemp(prefix=f"bolmo-bench-{label}-"))
            reference = Reference(args.reference, save_hf(model_fp32, workdir), threads,
                                  allocator=args.reference_allocator)
        for dtype_name in args.dtypes:
            model = build(name, getattr(torch, dtype_name))[1] if dtype_name != "float32" else model_fp32
            for length in args.lengths:
                ids = text_ids(model, length)

                def forward() -> None:
                    with torch.inference_mode():
                        model(ids)

                ours, theirs = math.inf, math.inf
                forward()
                if reference is not None:
                    reference.forward(ids)  # warm-up
                for _ in range(args.repeats):  # interleaved
                    if reference is not None:
                        theirs = min(theirs, reference.forward(ids))
                    start = time.perf_counter()
                    forward()
                    ours = min(ours, time.perf_counter() - start)
                expand_s = best_of(lambda: model.expand(ids), args.repeats)
                # What a lower precision costs: the change in the text's bits per byte against float32.
                bpb_shift = (0.0 if model is model_fp32
                             else bits_per_byte(model, length) - bits_per_byte(model_fp32, length))
                row = {"model": label, "dtype": dtype_name, "bytes": length, "seconds": round(ours, 4),
                       "bytes_per_s": length / ours, "reference_bytes_per_s": length / theirs if reference else "",
                       "vs_reference": round(theirs / ours, 2) if reference else "",
                       "bpb_vs_float32": round(bpb_shift, 5), "expand_bytes_per_s": length / expand_s}
                rows.append(row)
            if model is not model_fp32:
                del model
        if reference is not None:
            reference.close()
        del model_fp32
    report("forward", rows, ["model", "dtype", "bytes", "seconds", "bytes_per_s", "reference_bytes_per_s",
                             "vs_reference", "bpb_vs_float32", "expand_bytes_per_s"],
           {"device": "cpu", "repeats": args.repeats, "batch": 1, "threads": threads,
            "reference": str(args.reference) if args.reference else None, "reference_dtype": "float32",
            "reference_allocator": args.reference_allocator,
            "text": "README.md bytes"})


if __name__ == "__main__":
    main()

# python benchmarks/forward.py [--lengths 1000 8000] [--repeats 3] [--skip-1b]
"""Forward-pass throughput (bytes/s) on CPU, float32 and bfloat16, for the fixture model and a
random model with Bolmo-1B's local sizes and 2 global layers."""

from __future__ import annotations

import argparse

import torch

from common import bolmo_1b_local_config, fixture_model, random_model, report, time_call


def random_ids(model, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Printable ASCII bytes, so the boundary predictor sees text-like input.
    body = torch.randint(32 + 4, 127 + 4, (1, length), generator=g)
    return torch.cat([torch.ones(1, 1, dtype=torch.long), body], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 8000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-1b", action="store_true", help="only the fixture model")
    args = parser.parse_args()

    models = [("fixture tiny-gqa", fixture_model)]
    if not args.skip_1b:
        config = bolmo_1b_local_config()
        models.append(("1B local sizes, 2 global layers", lambda dtype: random_model(config, dtype)))
    rows = []
    for label, build in models:
        for dtype in (torch.float32, torch.bfloat16):
            model = build(dtype)
            for length in args.lengths:
                ids = random_ids(model, length)
                expanded = model.expand(ids)  # host-side work, timed separately below

                def forward() -> None:
                    with torch.inference_mode():
                        model(ids, expanded_ids=expanded)

                seconds = time_call(forward, args.repeats)
                expand_seconds = time_call(lambda: model.expand(ids), args.repeats, warmup=0)
                rows.append({"model": label, "dtype": str(dtype).removeprefix("torch."), "bytes": length,
                             "seconds": round(seconds, 4), "bytes_per_s": length / seconds,
                             "expand_bytes_per_s": length / expand_seconds})
            del model
    report("forward", rows, ["model", "dtype", "bytes", "seconds", "bytes_per_s", "expand_bytes_per_s"],
           {"device": "cpu", "repeats": args.repeats, "batch": 1})


if __name__ == "__main__":
    main()

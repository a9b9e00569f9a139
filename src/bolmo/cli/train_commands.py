"""Training commands: `bolmo prepare` and `bolmo train`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bolmo.cli.paths import output_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="tokenize documents into a byte-level training data directory",
        description="Tokenize .txt / .jsonl / .jsonl.gz / .jsonl.zst documents ({\"text\": ...} per line) with "
        "the teacher's subword tokenizer into memory-mapped arrays for byteifying. An interrupted run "
        "resumes when started again with the same arguments.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="input files or directories")
    p.add_argument("--tokenizer", required=True, type=Path,
                   help="HF tokenizer directory (tokenizer.json), or default-teacher: the bundled teacher's")
    p.add_argument("--out", required=True, type=output_dir, metavar="DATA_DIR", help="output directory")
    p.add_argument("--workers", type=int, default=1, help="tokenizing processes (default 1)")
    p.add_argument("--max-documents", type=int, default=None, metavar="N",
                   help="read only the first N input documents (bad and empty ones count)")
    p.add_argument("--docs-per-shard", type=int, default=10_000, metavar="N",
                   help="documents per shard, the unit of resumption (default 10000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_prepare)

    t = subparsers.add_parser(
        "train",
        help="train: subword pretraining, byteifying stage 1 or stage 2 (torchrun for many processes)",
        description="Run the training job CONFIG.yaml describes (stage: subword | stage1 | stage2), with "
        "key=value overrides of any config field (dotted keys: optim.lr=3e-4 losses.weights.boundary=2). "
        "Several processes: torchrun --nproc-per-node N -m bolmo.cli train CONFIG.yaml ...",
    )
    t.add_argument("config", type=Path, metavar="CONFIG.yaml", help="training config (see docs/training.md)")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. schedule.steps=100")
    t.add_argument("--resume", action="store_true", help="continue from <run_dir>/latest (same as resume=true)")
    t.set_defaults(handler=_train)


def _prepare(args: argparse.Namespace) -> int:
    from bolmo.train.prepare import PrepareConfig, format_summary, prepare

    from bolmo.checkpoint.sources import bundled_or_path

    started = time.time()
    tokenizer = bundled_or_path(args.tokenizer)  # `default-teacher`: the bundled teacher's directory
    meta = prepare(PrepareConfig(inputs=args.inputs, tokenizer=tokenizer, out=args.out, workers=args.workers,
                                 max_documents=args.max_documents, docs_per_shard=args.docs_per_shard,
                                 progress=not args.no_progress))
    print(format_summary(meta))
    print(f"wrote {args.out} in {time.time() - started:.1f} s")
    return 0


def _train(args: argparse.Namespace) -> int:
    from bolmo.train.config import load_config
    from bolmo.train.trainer import train

    config = load_config(args.config, [*args.overrides, *(["resume=true"] if args.resume else [])])
    result = train(config)
    if result.main:
        m = result.metrics
        shown = [(k, m[k]) for k in ("loss", "ce", "bpb", "boundary_f1", "bytes_per_patch", "bytes_per_s", "mfu")
                 if k in m]
        print(f"{config.stage}: step {result.step} of {config.schedule.steps}, {result.seconds:.1f} s in this process")
        if shown:
            print("last step: " + ", ".join(f"{k} {v:.4g}" for k, v in shown))
        print(f"run directory: {result.run_dir} (metrics.jsonl, loss_curve.png, latest checkpoint "
              f"{(result.run_dir / 'latest').read_text().strip() if (result.run_dir / 'latest').is_file() else 'none'})")
        if result.export is not None:
            print(f"HF export: {result.export}")
    return 0

"""Training commands: `bolmo prepare` (the trainer adds `bolmo train` here)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="tokenize documents into a byte-level training data directory",
        description="Tokenize .txt / .jsonl / .jsonl.gz / .jsonl.zst documents ({\"text\": ...} per line) with "
        "the teacher's subword tokenizer into memory-mapped arrays for byteifying. An interrupted run "
        "resumes when started again with the same arguments.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="input files or directories")
    p.add_argument("--tokenizer", required=True, type=Path, help="HF tokenizer directory (tokenizer.json)")
    p.add_argument("--out", required=True, type=Path, metavar="DATA_DIR", help="output directory")
    p.add_argument("--workers", type=int, default=1, help="tokenizing processes (default 1)")
    p.add_argument("--max-documents", type=int, default=None, metavar="N",
                   help="read only the first N input documents (bad and empty ones count)")
    p.add_argument("--docs-per-shard", type=int, default=10_000, metavar="N",
                   help="documents per shard, the unit of resumption (default 10000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from bolmo.train.prepare import PrepareConfig, format_summary, prepare

    started = time.time()
    meta = prepare(PrepareConfig(inputs=args.inputs, tokenizer=args.tokenizer, out=args.out, workers=args.workers,
                                 max_documents=args.max_documents, docs_per_shard=args.docs_per_shard,
                                 progress=not args.no_progress))
    print(format_summary(meta))
    print(f"wrote {args.out} in {time.time() - started:.1f} s")
    return 0

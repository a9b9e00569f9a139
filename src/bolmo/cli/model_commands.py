"""`bolmo info` and `bolmo score`: look at a model, and measure bits per byte on files."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import sys
from pathlib import Path

from bolmo.errors import BolmoError

DTYPES = ("float32", "bfloat16", "float16")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="checkpoint directory, downloaded Hub repo id, or a bundled model: default, default-teacher "
                             "(default: default)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda or cuda:1 (default cpu)")
    add_dtype_argument(parser)


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="dtype the weights are loaded in (default float32). On a CPU bfloat16 is the fast one; "
                             "float16 has no fast CPU kernels (`bolmo score README.md`: 2.7x float32's time)")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", action="store_true",
                        help="decode through torch.compile (as BOLMO_COMPILE=1 does): about three times as fast "
                             "at batch 1 on a CPU, after a one-off compilation of 6-90 s")


def apply_compile(args: argparse.Namespace) -> None:
    """--compile: every decoding engine of this process compiles its step (the default they read)."""
    if getattr(args, "compile", False):
        from bolmo.generation.compiled import COMPILE_ENV

        os.environ[COMPILE_ENV] = "1"


def read_stdin() -> bytes:
    """All of stdin, as the bytes given (`-` as a prompt or a file), or BolmoError when there is none."""
    if sys.stdin is None:  # started with stdin closed (`<&-`)
        raise BolmoError("-: no standard input to read")
    try:
        return sys.stdin.buffer.read()
    except (OSError, ValueError) as exc:  # unreadable, or closed
        raise BolmoError(f"-: cannot read standard input ({exc})") from None


def load_from_args(args: argparse.Namespace):
    """--model, loaded with the command's --device, --dtype and --compile."""
    return load_with_args(args.model, args)


def load_with_args(source: str | None, args: argparse.Namespace):
    """`source` (None: the default model), loaded with the command's --device, --dtype and --compile."""
    import torch

    import bolmo

    apply_compile(args)
    return bolmo.load(source, device=args.device, dtype=getattr(torch, args.dtype))


# Shown by `bolmo info`, in this order, where the config has them.
INFO_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "intermediate_size", "vocab_size", "max_position_embeddings", "layer_types", "sliding_window",
               "rope_theta", "rope_scaling",
               "num_local_encoder_layers", "num_local_decoder_layers", "num_local_heads", "local_intermediate_size",
               "add_expanded_embeddings", "subword_vocab_size", "boundary_predictor_lookahead", "boundary_threshold",
               "rms_norm_eps", "local_rms_norm_eps")


def register(subparsers: argparse._SubParsersAction) -> None:
    info = subparsers.add_parser("info", help="print a model's config and parameter counts per component "
                                              "(Bolmo or subword OLMo, HF or OLMo-core)",
                                 description="Load a model (Bolmo or subword OLMo, HF or OLMo-core layout) and print "
                                 "its architecture (sizes, context, boundary predictor) and its parameter counts per "
                                 "component, without running it.")
    info.add_argument("source", nargs="?", default=None, metavar="PATH",
                      help="checkpoint directory, downloaded Hub repo id, or a bundled model: default, default-teacher "
                             "(default: default)")
    info.add_argument("--model", dest="model_option", default=None, metavar="PATH",
                      help="the same, as an option (as score, generate and eval take it)")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(handler=run_info)

    score = subparsers.add_parser(
        "score", help="bits per byte of text files, per file and overall",
        description="Bits per byte of each file and overall. A file longer than the model's positions is "
                    "scored in windows (see bolmo.scoring.windows): each window reads up to "
                    "max_position_embeddings - 1 bytes (tokens for a subword model) and scores the ones "
                    "after its CONTEXT bytes of context, so every byte is scored once.")
    score.add_argument("files", nargs="+", type=Path, metavar="FILE",
                       help="UTF-8 text files (not empty); '-' reads one from stdin")
    add_model_arguments(score)
    score.add_argument("--batch-size", type=int, default=4, help="windows run together (default 4)")
    score.add_argument("--context", type=int, default=None,
                       help="context bytes (tokens) read before each window after the first "
                            "(default: half a window). Each window then scores window - CONTEXT new bytes, so "
                            "a context near the window size costs one forward pass per few bytes")
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")
    score.set_defaults(handler=run_score)


def run_info(args: argparse.Namespace) -> int:
    from rich.table import Table

    from bolmo.console import stdout_console

    from bolmo.loading import load_config_and_counts

    if args.source is not None and args.model_option is not None:
        raise BolmoError("name the model once: `bolmo info PATH` or `bolmo info --model PATH`")
    source = args.source if args.source is not None else args.model_option
    config, counts, kind = load_config_and_counts(source)
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    if args.json:
        print(json.dumps({"format": kind, "config": config_dict, "parameters": counts}, indent=2))
        return 0
    console = stdout_console()
    table = Table(title=f"{source or 'bundled default model'} ({kind})", show_header=False)
    for key in INFO_FIELDS:
        if key not in config_dict:  # a subword model has no local fields
            continue
        value = config_dict[key]
        if key == "layer_types" and value:
            value = ", ".join(f"{t} x{value.count(t)}" for t in dict.fromkeys(value))
        table.add_row(key, str(value))
    console.print(table)
    params = Table(title="parameters")
    params.add_column("component")
    params.add_column("count", justify="right")
    for name, count in counts.items():
        params.add_row(name, f"{count:,}")
    console.print(params)
    return 0


def run_score(args: argparse.Namespace) -> int:
    if sum(str(file) == "-" for file in args.files) > 1:  # the second read would find stdin empty
        raise BolmoError("standard input (-) can be scored once; give it once")
    texts = [read_text_file(file) for file in args.files]
    if args.batch_size < 1:
        raise BolmoError("--batch-size must be at least 1")
    if args.context is not None and args.context < 0:
        raise BolmoError("--context must be at least 0")
    model = load_from_args(args)
    results = model.score(texts, batch_size=args.batch_size, context=args.context)
    total_nats = sum(r.nats for r in results)
    total_bytes = sum(r.n_bytes for r in results)
    overall = total_nats / math.log(2) / total_bytes if total_bytes else float("nan")
    if args.json:
        rows = [{"file": str(f), **r.as_dict()} for f, r in zip(args.files, results)]
        for row in rows:
            row.pop("text")
        print(json.dumps({"files": rows, "total_bytes": total_bytes, "total_nats": total_nats,
                          "bits_per_byte": overall}, indent=2))
        return 0
    from rich.table import Table

    from bolmo.console import stdout_console

    table = Table(title=f"bits per byte ({args.model or 'bundled model'})")
    table.add_column("file", overflow="fold")  # a long name wraps onto more lines, never cut
    for column in ("bytes", "nats", "bits/byte"):
        table.add_column(column, justify="right", no_wrap=True)
    for file, r in zip(args.files, results):
        table.add_row(str(file), f"{r.n_bytes:,}", f"{r.nats:,.2f}", f"{r.bits_per_byte:.4f}")
    table.add_row("overall", f"{total_bytes:,}", f"{total_nats:,.2f}", f"{overall:.4f}", style="bold")
    stdout_console().print(table)
    return 0


def read_text_file(file: Path) -> str:
    """A non-empty UTF-8 text file's contents (`-`: stdin's), or BolmoError naming the file."""
    from bolmo.eval.documents import read_text_file as read_document
    from bolmo.scoring import empty_text_error

    if str(file) != "-":
        text = read_document(file)
    else:
        try:
            text = _decode_text(read_stdin())
        except UnicodeDecodeError as exc:
            raise BolmoError(f"-: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text:
        raise empty_text_error(str(file))
    return text


def _decode_text(data: bytes) -> str:
    """`data` decoded as `Path.read_text` decodes a file (UTF-8, universal newlines), so that
    `bolmo score - < FILE` scores what `bolmo score FILE` does."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()

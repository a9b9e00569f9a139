"""`bolmo convert`, `bolmo inspect`, `bolmo verify`: checkpoint tooling (bolmo.checkpoint does the work)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bolmo.cli.paths import output_dir
from bolmo.console import byte_progress
from bolmo.errors import CheckpointError

if TYPE_CHECKING:
    from bolmo.checkpoint.convert import ConversionResult

_CONVERT_DESCRIPTION = """\
Convert a checkpoint, tensor by tensor (peak memory ~ the largest tensor, not the model).
Sources are recognised automatically: OLMo-core Bolmo or OLMo 2/3 directories (config.json +
model_and_optim/; naming model_and_optim/ itself reads its step directory), any
torch.distributed.checkpoint directory (e.g. FSDP, with --prefix/--ema; a config.json of another
model beside it is ignored, with a note), and HF Bolmo / Olmo2 / Olmo3 directories. Everything is
checked before anything is written; the output appears atomically: on any error (or Ctrl-C)
nothing is left at DST."""


def register(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser("convert", help="convert between OLMo-core/DCP and HF safetensors",
                                    description=_CONVERT_DESCRIPTION,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    convert.add_argument("src", type=Path, help="checkpoint to read (or a bundled model: default, default-teacher)")
    convert.add_argument("dst", type=output_dir, help="directory to create")
    convert.add_argument("--to", required=True, choices=["hf", "olmo-core"], help="output format")
    which = convert.add_mutually_exclusive_group()
    which.add_argument("--prefix",
                       help="top-level DCP key holding the weights (default: model); '' takes every tensor "
                       "with its name unchanged (a DCP saved without a top-level key, e.g. a separate EMA "
                       "directory). DCP sources only")
    which.add_argument("--ema", dest="prefix", action="store_const", const="ema",
                       help="convert the EMA weights (same as --prefix ema)")
    convert.add_argument("--allow-missing", action="store_true",
                         help="with --prefix/--ema (refused without): write the output even though the prefix lacks "
                         "trained parameters that 'model' has, naming them (default: fail). What the prefix lacks and "
                         "training does not update (buffers, frozen parameters: no optimizer state) is always taken "
                         "from 'model'")
    convert.add_argument("--key-map", type=Path, metavar="FILE",
                         help="JSON object renaming output tensors: {\"old name\": \"new name\", ...}; for checkpoints "
                         "without a model config (generic DCP)")
    convert.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                         help="cast floating-point tensors (default: keep the stored dtype)")
    convert.add_argument("--shard-size", default="5GB",
                         help="largest safetensors file, e.g. 5GB, 500MB, 2GiB (default: 5GB)")
    convert.add_argument("--overwrite", action="count", default=0,
                         help="replace DST if it exists and looks like a checkpoint (twice: whatever it holds)")
    convert.add_argument("--verify-against", type=Path, metavar="REF",
                         help="fail before writing unless the output would have the same tensors (names, shapes, "
                         "dtypes) as REF, an HF directory or .safetensors file")
    convert.set_defaults(handler=run_convert)

    inspect = subparsers.add_parser("inspect", help="list the tensors of any checkpoint",
                                    description="Tensor inventory (name, shape, dtype, file) of an HF directory, "
                                    "a .safetensors file or any DCP / OLMo-core directory, with totals per "
                                    "top-level prefix and per module. Reads metadata only.")
    inspect.add_argument("ckpt", type=Path, help="checkpoint directory or .safetensors file")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of tables")
    inspect.set_defaults(handler=run_inspect)

    verify = subparsers.add_parser("verify", help="structural check of a checkpoint directory",
                                   description="Check that every file the metadata/index names exists and is "
                                   "long enough, headers and byte ranges are valid, every DCP item loads and "
                                   "matches its CRC-32s (this reads the whole checkpoint), and the config's model "
                                   "has exactly the stored tensors. Exit 0 if so, 1 with the list of problems.")
    verify.add_argument("dir", type=Path, metavar="PATH",
                        help="HF or OLMo-core (or any DCP) directory, or a .safetensors file")
    verify.set_defaults(handler=run_verify)


def run_convert(args: argparse.Namespace) -> int:
    from bolmo.checkpoint.atomic import check_destination
    from bolmo.checkpoint.convert import execute, plan_conversion
    from bolmo.checkpoint.inventory import parse_dtype
    from bolmo.checkpoint.safetensors_io import parse_size
    from bolmo.checkpoint.sources import bundled_or_path

    args.src = bundled_or_path(args.src)  # `default` / `default-teacher`: the bundled models
    shard_size = parse_size(args.shard_size)
    key_map = _read_key_map(args.key_map) if args.key_map else None
    check_destination(args.dst, args.overwrite, sources=[args.src])
    plan = plan_conversion(args.src, args.to, prefix=args.prefix, key_map=key_map,
                           dtype=parse_dtype(args.dtype, "--dtype") if args.dtype else None,
                           allow_missing=args.allow_missing, verify_against=args.verify_against)
    with byte_progress(f"{plan.source.kind.value} -> {args.to}", plan.total_bytes) as progress:
        result = execute(plan, args.dst, overwrite=args.overwrite, shard_size=shard_size, progress=progress)
    _print_summary(result, args)
    return 0


def _read_key_map(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the key map ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise CheckpointError(f"{path}: the key map must be a JSON object of name -> new name strings")
    return data


def _print_summary(result: ConversionResult, args: argparse.Namespace) -> None:
    from bolmo.checkpoint.inventory import human_bytes

    plan = result.plan
    weights = [f for f in result.files if f.endswith((".safetensors", ".distcp"))]
    rate = plan.total_bytes / result.seconds if result.seconds else 0.0
    print(f"Converted {plan.source.path} ({plan.source.kind.value}) -> {result.destination} ({plan.target})")
    origin = {None: "", "": " (every DCP tensor)"}.get(plan.prefix, f" from '{plan.prefix}'")
    print(f"  tensors:  {len(plan.tensors)}{origin}, {human_bytes(plan.total_bytes)}")
    if plan.from_model:
        print(f"  from 'model': {len(plan.from_model)} tensor(s) '{plan.prefix}' does not track (no optimizer "
              f"state: buffers, frozen parameters): {', '.join(plan.from_model)}")
    print(f"  files:    {len(result.files)} ({len(weights)} weight file(s)); config.json: "
          f"{'yes' if 'config.json' in result.files else 'no (source has no model config)'}")
    if plan.tokenizer_dir is not None:
        print(f"  tokenizer: copied {plan.tokenizer_dir.name}/")
    print(f"  time:     {result.seconds:.1f} s ({human_bytes(rate)}/s)")
    if args.verify_against:
        print(f"  verified against {args.verify_against}: same tensor names, shapes and dtypes")
    for warning in [*plan.source.notes, *plan.warnings]:
        print(f"  warning:  {warning}")


def run_inspect(args: argparse.Namespace) -> int:
    from bolmo.checkpoint.inventory import dtype_name, human_bytes, totals_by
    from bolmo.checkpoint.sources import open_checkpoint

    source = open_checkpoint(args.ckpt)
    infos = list(source.reader.inventory().values())
    problems = source.reader.problems()  # structural only: headers, missing or short files (no data read)
    if problems and not infos:
        raise CheckpointError("; ".join(problems))
    groups = {"prefix": totals_by(infos, 1), "module": totals_by(infos, 2)}
    if args.json:
        print(json.dumps({
            "path": str(args.ckpt), "kind": source.kind.value,
            "tensors": [{"name": i.name, "shape": list(i.shape), "dtype": dtype_name(i.dtype), "files": list(i.files)}
                        for i in infos],
            "totals": {level: {k: vars(t) for k, t in totals.items()} for level, totals in groups.items()},
            "notes": source.notes, "problems": problems,
        }, indent=2))
        return _report_problems(problems)
    from rich.table import Table

    from bolmo.console import stdout_console

    table = Table(title=f"{args.ckpt} ({source.kind.value})")
    for column in ("name", "shape", "dtype", "file"):
        table.add_column(column, overflow="fold")
    for i in infos:
        table.add_row(i.name, str(list(i.shape)) if i.is_tensor else "", dtype_name(i.dtype), ", ".join(i.files))
    console = stdout_console()
    console.print(table)
    for level, totals in groups.items():
        summary = Table(title=f"totals per {level}")
        for column in (level, "tensors", "parameters", "bytes"):
            summary.add_column(column, justify="left" if column == level else "right")
        for key, t in totals.items():
            summary.add_row(key, str(t.count), f"{t.parameters:,}", human_bytes(t.bytes))
        console.print(summary)
    objects = sum(not i.is_tensor for i in infos)
    if objects:
        console.print(f"{objects} non-tensor item(s) (dtype 'object'), not counted above")
    for note in source.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    return _report_problems(problems)


def _report_problems(problems: list[str]) -> int:
    """Exit status of `inspect`: 0, or 1 with each problem on stderr (`bolmo verify` checks further)."""
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


def run_verify(args: argparse.Namespace) -> int:
    from bolmo.checkpoint.inventory import human_bytes
    from bolmo.checkpoint.verify import verify_directory

    report = verify_directory(args.dir)
    print(f"{report.path}: {report.kind or 'unrecognised'}; {report.tensors} tensors "
          f"({human_bytes(report.total_bytes)}), {report.objects} other item(s)")
    for note in report.notes:
        print(f"  note: {note}")
    if report.ok:
        print("  ok: files, byte ranges and tensor inventory are consistent")
        return 0
    print(f"  {len(report.problems)} problem(s):")
    for problem in report.problems:
        print(f"  - {problem}")
    return 1

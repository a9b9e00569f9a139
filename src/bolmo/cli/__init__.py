"""The `bolmo` command line: one entry point, one module of subcommands per area.

Each module in COMMAND_MODULES has `register(subparsers)`, which adds its subcommands and sets
`handler` (a function taking the parsed args and returning an exit code). Handlers only parse and
call the library; heavy imports happen inside them so `bolmo --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bolmo.errors import BolmoError

COMMAND_MODULES = [
    "bolmo.cli.model_commands",
    "bolmo.cli.generate_commands",
    "bolmo.cli.train_commands",
    "bolmo.cli.hub_commands",
    "bolmo.cli.checkpoint_commands",
    "bolmo.cli.olmo_commands",
    "bolmo.cli.eval_commands",
    "bolmo.cli.serve_commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bolmo", description="Byte-level Bolmo language models.")
    from bolmo import __version__

    parser.add_argument("--version", action="version", version=f"bolmo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except BolmoError as exc:
        print(f"bolmo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bolmo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The `bolmo` command line: one entry point, one module of subcommands per area.

Each module in COMMAND_MODULES has `register(subparsers)`, which adds its subcommands and sets
`handler` (a function taking the parsed args and returning an exit code). Handlers only parse and
call the library; heavy imports happen inside them so `bolmo --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from bolmo.errors import BolmoError, BolmoWarning

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


class Terminated(BaseException):
    """SIGTERM (sent by `timeout`, schedulers, `docker stop`) raised as an exception, so that it
    unwinds like Ctrl-C: temporary outputs are removed and the destination is left as it was."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse argv. KEY=VALUE overrides may also follow a flag (`bolmo train C.yaml --resume a=1`):
    argparse hands a `*` positional its values only before the first flag and calls the rest
    unrecognized, so those are added to the command's overrides here."""
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and \
            all("=" in item and not item.startswith("-") for item in extra):
        args.overrides += extra
    elif extra:  # with the command's own usage line, as argparse gives for its other errors
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; every way it ends (error, Ctrl-C, SIGTERM, closed pipe) becomes an exit code."""
    prog = _prog(sys.argv[1:] if argv is None else argv)  # for an interruption while parsing
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal.signal works only there
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    _reopen_closed_streams()
    try:
        args = _parse(build_parser(), argv)
        prog = f"bolmo {args.command}"
        _check_inductor_cache_dir()
        _import_torch()
        with warnings.catch_warnings(), _rich_broken_pipe_raises():
            warnings.showwarning = _warning_printer(args.command)
            code = int(args.handler(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not in an "Exception ignored" at exit
            return code
    except BolmoError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `bolmo info --json | head -1`: the reader left; stop quietly like Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 128 + signal.SIGPIPE
    except OSError as exc:
        # A full disk or quota, a dead mount (`bolmo score --json > results.json` on /dev/full, or an
        # output file): one line naming what could not be written, not a traceback (outputs are
        # written atomically, so nothing half-written stays). Other OSErrors are bugs: re-raised.
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        # A write to an open file or to stdout names no file, and a failed write leaves nothing
        # buffered to tell which it was: said as "the output". Whatever stdout still holds is
        # flushed, then it is pointed at /dev/null so that exit's flush cannot fail a second time.
        with contextlib.suppress(OSError):
            sys.stdout.flush()
        with contextlib.suppress(OSError, ValueError):  # ValueError: a stdout without a descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        where = exc.filename or "the output"
        print(f"{prog}: error: cannot write {where} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    except BaseException as exc:  # noqa: B036 - anything that is not an interruption is re-raised below
        # Python wraps a signal that lands inside some machinery (an import defining a class: "Error
        # calling __set_name__") in another exception, and torch's distributed checkpoint wraps it in a
        # CheckpointException (a BaseException); it is still the interruption the user caused.
        cause = _interruption(exc)
        if cause is None:
            raise
        terminated = isinstance(cause, Terminated)
        _clear_unhandled_interrupt()
        print(f"{prog}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


_OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def _reopen_closed_streams() -> None:
    """`bolmo generate x >&-`: Python starts with sys.stdout (or stderr) None when the descriptor is
    closed, and the first write raises AttributeError deep in a command. Discard that stream's output
    instead, as a closed pipe's is."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))


def _check_inductor_cache_dir() -> None:
    """torch creates TORCHINDUCTOR_CACHE_DIR when torch._dynamo is first imported, which building any
    model on the meta device does (no --compile needed); a path that cannot be created then fails
    deep in torch's import. Named here instead."""
    path = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not path:
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise BolmoError(f"TORCHINDUCTOR_CACHE_DIR={path}: cannot create it ({exc.strerror or exc}); "
                         "point it at a writable directory or unset it") from None


def _prog(argv: list[str]) -> str:
    """`bolmo COMMAND` for messages before argparse has run: argv's first word that is not an option."""
    return " ".join(["bolmo", *[word for word in argv if not word.startswith("-")][:1]])


def _clear_unhandled_interrupt() -> None:
    """A Ctrl-C that escapes code run by exec() (dataclasses build `__init__` so, many while torch
    imports) is marked unhandled, and CPython then ends a `python -m bolmo.cli` run by SIGINT
    whatever main() returns; every exec() of a string starts by clearing that mark, as this one does."""
    exec("")  # noqa: S102 - runs nothing


def _import_torch() -> None:
    """Nearly every command needs torch. Its import runs C++ that calls back into Python: a
    Ctrl-C raised inside such a callback ends the process by abort (pybind11's error_already_set:
    SIGABRT, no message), and one raised while it imports numpy becomes a "Failed to initialize
    NumPy" warning (the interruption lost). So numpy, then torch, are imported here, with Ctrl-C and
    SIGTERM held: one that arrives meanwhile is delivered right after, an ordinary interruption
    (and numpy comes first so that an interruption raised in its import is never torch's to lose)."""
    from bolmo.checkpoint.interrupts import signals_held

    with signals_held():
        import numpy  # noqa: F401
        import torch  # noqa: F401


@contextlib.contextmanager
def _rich_broken_pipe_raises() -> Iterator[None]:
    """rich's Console answers a closed stdout with SystemExit(1); have it raise BrokenPipeError instead,
    so a table stops like print() does, through main()'s one handler (quietly, exit 141)."""
    from rich.console import Console

    def raise_broken_pipe(console: Console) -> None:
        console.quiet = True  # nothing more from this console
        raise BrokenPipeError

    default = Console.on_broken_pipe
    Console.on_broken_pipe = raise_broken_pipe
    try:
        yield
    finally:
        Console.on_broken_pipe = default


def _interruption(exc: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or Terminated that `exc` is or was raised from, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            return exc
        seen.add(id(exc))
        for wrapped in getattr(exc, "failures", {}).values():  # torch DCP: {rank: (exception, traceback)}
            found = _interruption(wrapped[0]) if isinstance(wrapped, tuple) and wrapped else None
            if found is not None:
                return found
        exc = exc.__cause__ or exc.__context__
    return None


def _warning_printer(command: str):
    """bolmo's own warnings as one line each (`bolmo COMMAND: warning: ...`); others as Python prints them."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, BolmoWarning):
            print(f"bolmo {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

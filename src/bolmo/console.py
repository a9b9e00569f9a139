"""The rich Console the commands and the evaluation reports print their tables with, and the
byte-count progress bar of the commands that write checkpoints."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PIPED_WIDTH = 1_000  # columns a table may use when stdout is not a terminal


def stdout_console(**options):
    """A Console on stdout. Piped or redirected, rich would wrap a table at 80 columns and split
    tensor and file names over two lines (so `grep` misses them); there it gets PIPED_WIDTH
    columns, and a table is only as wide as its content."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH, **options)


@contextmanager
def byte_progress(description: str, total: int | None = None) -> Iterator[Callable[[str, int], None]]:
    """A byte-count progress bar on stderr (with the time remaining when `total` is known); yields
    the callback the checkpoint writers call per tensor (name, bytes written). Off when stderr is
    not a terminal: a log gets no bar, and an error stays the only line."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    console = Console(stderr=True)
    columns = [BarColumn(), DownloadColumn(), TransferSpeedColumn(), *([TimeRemainingColumn()] if total else [])]
    with Progress("[progress.description]{task.description}", *columns, console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda _, n: bar.advance(task, n)

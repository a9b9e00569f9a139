"""The rich Console the commands and the evaluation reports print their tables with."""

from __future__ import annotations

import sys

PIPED_WIDTH = 1_000  # columns a table may use when stdout is not a terminal


def stdout_console(**options):
    """A Console on stdout. Piped or redirected, rich would wrap a table at 80 columns and split
    tensor and file names over two lines (so `grep` misses them); there it gets PIPED_WIDTH
    columns, and a table is only as wide as its content."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH, **options)

"""argparse types for paths the commands create."""

from __future__ import annotations

import argparse
from pathlib import Path


def output_dir(value: str) -> Path:
    """A directory to create or write into. An empty string (an unset shell variable: `--out "$DST"`)
    would become Path("."), the current directory, which --overwrite would then replace: refused."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty path; name the directory to write")
    return Path(value)

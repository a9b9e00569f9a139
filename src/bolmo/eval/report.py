"""Side-by-side results: one row per task (or document, source, ...), one column per model; printed
as a rich table and written as JSON (atomically: a temporary file, then a rename)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bolmo.errors import BolmoError


def model_label(source: str | None) -> str:
    return source if source is not None else "bundled default model"


def format_value(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def print_table(title: str, row_names: Sequence[str], columns: Mapping[str, Mapping[str, float | None]],
                first_column: str = "task", digits: int = 4) -> None:
    """columns: model label -> {row name: value}. Missing values print as "-"."""
    from rich.table import Table

    from bolmo.console import stdout_console

    table = Table(title=title)
    table.add_column(first_column)
    for label in columns:
        table.add_column(label, justify="right")
    for name in row_names:
        table.add_row(name, *(format_value(values.get(name), digits) for values in columns.values()))
    stdout_console().print(table)


def non_finite_field(data: Any, where: str = "") -> str | None:
    """The path (e.g. `results.x.overall`) of the first NaN or infinite number in `data`, or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "(top level)"
    items = data.items() if isinstance(data, Mapping) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = non_finite_field(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` so that a reader never sees a half-written file. NaN and
    infinity are refused (BolmoError naming the field): they are not JSON, and strict readers fail."""
    field = non_finite_field(data)
    if field is not None:
        raise BolmoError(f"{path}: not written, {field} is not a finite number (NaN or infinite)")
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    check_output(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BolmoError(f"{path}: cannot write the results ({exc.strerror or exc})") from None


def check_output(path: Path) -> None:
    """BolmoError unless a results file can be written at `path` (missing parent directories are
    created): checked before an evaluation starts, so a bad --output does not cost the run."""
    if path.is_dir():
        raise BolmoError(f"{path}: is a directory; give a file name for the results")
    existing = next((p for p in path.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise BolmoError(f"{path}: cannot write the results: {existing} is not a directory")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise BolmoError(f"{path}: cannot write the results: no permission to write in {existing}")

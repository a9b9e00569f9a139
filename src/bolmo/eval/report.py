"""Side-by-side results: one row per task (or document, source, ...), one column per model; printed
as a rich table and written as JSON (atomically: a temporary file, then a rename)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def model_label(source: str | None) -> str:
    return source if source is not None else "bundled default model"


def format_value(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def print_table(title: str, row_names: Sequence[str], columns: Mapping[str, Mapping[str, float | None]],
                first_column: str = "task", digits: int = 4) -> None:
    """columns: model label -> {row name: value}. Missing values print as "-"."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column(first_column)
    for label in columns:
        table.add_column(label, justify="right")
    for name in row_names:
        table.add_row(name, *(format_value(values.get(name), digits) for values in columns.values()))
    Console().print(table)


def write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` so that a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)

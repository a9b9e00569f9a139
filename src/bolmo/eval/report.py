"""Side-by-side results: one row per task (or document, source, ...), one column per model; printed
as a rich table and written as JSON (atomically: a temporary file, then a rename)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
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
    write_atomically(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"), "the results")


def write_atomically(path: Path, write: Callable[[Path], object], what: str) -> None:
    """`write(tmp)` into a temporary file beside `path`, then rename it onto `path`: a reader never
    sees a half-written file. A symlink is written through (the link stays, its target gets the
    file); anything that is not a regular file (a device, a pipe) is refused by check_output, never
    replaced. An OSError (a full disk, a read-only file system) is one BolmoError naming `path`."""
    check_output(path, what)
    target = Path(os.path.realpath(path))
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BolmoError(f"{path}: cannot write {what} ({exc.strerror or exc})") from None


def check_output(path: Path, what: str = "the results") -> None:
    """BolmoError unless `what` can be written to a file at `path` (missing parent directories are
    created): checked before an evaluation starts, so a bad --output does not cost the run. An
    existing path must be a regular file (or a link to one): writing a device such as /dev/null or
    a pipe would replace it with a regular file."""
    if path.is_dir():
        raise BolmoError(f"{path}: is a directory; give a file name for {what}")
    if path.exists() and not path.is_file():
        raise BolmoError(f"{path}: is not a regular file (a device, a pipe or a socket); give a file name for {what}")
    existing = next((p for p in Path(os.path.realpath(path)).parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise BolmoError(f"{path}: cannot write {what}: {existing} is not a directory")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise BolmoError(f"{path}: cannot write {what}: no permission to write in {existing}")
    if existing is not None:  # a file system that refuses new files whatever the permissions say (/proc, read-only)
        try:
            tempfile.TemporaryFile(dir=existing).close()
        except OSError as exc:
            raise BolmoError(f"{path}: cannot write {what} in {existing} ({exc.strerror or exc})") from None


def check_not_an_input(output: Path, inputs: Sequence[Path], option: str) -> None:
    """BolmoError if `output` is one of the files an evaluation reads, or lies inside a directory it
    reads: writing there would replace an input, or add a document to the next run's inputs."""
    real = os.path.realpath(output)
    for source in inputs:
        source_real = os.path.realpath(source)
        if real == source_real:
            raise BolmoError(f"{output}: {option} names an input of this evaluation ({source}), which it would "
                             "overwrite: choose another file")
        if os.path.isdir(source_real) and real.startswith(source_real.rstrip(os.sep) + os.sep):
            raise BolmoError(f"{output}: {option} lies inside the input directory {source}, whose files are all "
                             "read as documents: choose a file outside it")

"""Documents for Paloma-style bits per byte: text files, directories of them, and JSONL files.

- a JSONL file (`.jsonl`, `.jsonl.gz`): one document per line, its text in `text` (or the field
  given), its source in `source` when present (Paloma's subsets), else the file's name;
- a directory: every file under it, recursively (hidden files skipped), each file's source being
  its folder relative to the directory (the directory's own name at the top level);
- any other file: one document whose source is its file name without the suffix.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from bolmo.errors import BolmoError


@dataclass(frozen=True)
class Document:
    doc_id: str
    source: str
    text: str


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def _jsonl_name(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".jsonl")


def read_text_file(path: Path) -> str:
    """A UTF-8 text file's contents, or BolmoError naming the file (`bolmo score` reads through it too)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BolmoError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise BolmoError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:  # a directory, a symlink loop, no permission...
        raise BolmoError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_jsonl(path: Path, text_field: str = "text") -> list[Document]:
    """The documents of a JSON-lines file (gzipped when it ends in .gz), or BolmoError naming the
    file and, where it has one, the line."""
    opener = gzip.open if path.suffix == ".gz" else open
    docs = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BolmoError(f"{path}: line {line_no} is not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                    raise BolmoError(f"{path}: line {line_no} has no string field {text_field!r}")
                doc_id = str(row.get("id", f"{path.name}:{line_no}"))
                docs.append(Document(doc_id, str(row.get("source", _jsonl_name(path))), row[text_field]))
    except UnicodeDecodeError as exc:  # decoded a block at a time: no line number to give
        raise BolmoError(f"{path}: not valid UTF-8 ({exc.reason})") from None
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a cut .gz ends in EOFError
        raise BolmoError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return docs


def collect_documents(paths: list[Path], text_field: str = "text") -> list[Document]:
    """Every document named by `paths` (see the module docstring), in a stable order."""
    docs: list[Document] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            for file in files:
                if _is_jsonl(file):
                    docs.extend(read_jsonl(file, text_field))
                    continue
                folder = file.parent.relative_to(path)
                source = path.name if folder == Path(".") else str(folder)
                docs.append(Document(str(file), source, read_text_file(file)))
        elif _is_jsonl(path):
            if not path.is_file():
                raise BolmoError(f"{path}: no such file")
            docs.extend(read_jsonl(path, text_field))
        else:
            docs.append(Document(str(path), path.stem, read_text_file(path)))
    if not docs:
        raise BolmoError(f"no documents found in {', '.join(map(str, paths))}")
    return docs

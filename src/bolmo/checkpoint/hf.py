"""Reading HF-layout checkpoints: `model.safetensors`, or shards listed in
`model.safetensors.index.json`, one tensor at a time (safetensors opens a tensor without reading
the rest of the file)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from bolmo.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path


class HFCheckpoint:
    """The tensors of an HF checkpoint directory, with their files, shapes and dtypes."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.entries: dict[str, TensorEntry] = {}
        for file in self._files():
            for name, shape, dtype in _read_header(file):
                if name in self.entries:
                    raise CheckpointError(f"{file}: tensor {name!r} also appears in {self.entries[name].file}")
                self.entries[name] = TensorEntry(name, shape, dtype, file)
        self._check_index()

    def _files(self) -> list[Path]:
        index = self.directory / INDEX_FILE
        single = self.directory / SINGLE_FILE
        if index.is_file():
            self.weight_map = _read_index(index)
            files = sorted({self.directory / f for f in self.weight_map.values()})
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index}: names missing shard file(s) {[f.name for f in missing]}")
            return files
        self.weight_map = None
        if single.is_file():
            return [single]
        raise CheckpointError(f"{self.directory}: no {SINGLE_FILE} or {INDEX_FILE}")

    def _check_index(self) -> None:
        if self.weight_map is None:
            return
        for name, file in self.weight_map.items():
            entry = self.entries.get(name)
            if entry is None or entry.file.name != file:
                raise CheckpointError(f"{self.directory / INDEX_FILE}: tensor {name!r} is not in {file}")

    def read(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        try:
            with safe_open(entry.file, framework="pt") as f:
                return f.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{entry.file}: cannot read tensor {name!r} ({exc})") from None

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor, file by file (each file opened once)."""
        by_file: dict[Path, list[str]] = {}
        for entry in self.entries.values():
            by_file.setdefault(entry.file, []).append(entry.name)
        for file, names in by_file.items():
            try:
                with safe_open(file, framework="pt") as f:
                    for name in names:
                        yield name, f.get_tensor(name)
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(f"{file}: cannot read ({exc})") from None


_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_header(file: Path) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes from a safetensors header, checking the file is long enough."""
    try:
        with safe_open(file, framework="pt") as f:
            names = list(f.keys())
            out = []
            for name in names:
                sl = f.get_slice(name)
                dtype = _DTYPES.get(sl.get_dtype())
                if dtype is None:
                    raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {sl.get_dtype()}")
                out.append((name, tuple(sl.get_shape()), dtype))
            return out
    except (SafetensorError, OSError) as exc:
        # safetensors validates the header JSON and that the data covers every byte range.
        raise CheckpointError(f"{file}: not a valid safetensors file ({exc})") from None


def _read_index(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text())
        weight_map = data["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map must be an object")
    return weight_map

"""HF weight files: validate and read safetensors (single or sharded), and write them tensor by tensor.

Headers are parsed and checked here, before `safetensors.safe_open` sees a file, so a damaged
download is reported as "which file, what is wrong" instead of a Rust panic or a short read later.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import torch

from bolmo.checkpoint.inventory import SAFETENSORS_CODES, SAFETENSORS_DTYPES, TensorInfo
from bolmo.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DEFAULT_SHARD_SIZE = 5 * 10**9  # transformers' default max_shard_size
_MAX_HEADER = 100_000_000  # the limit safetensors itself enforces


@dataclass(frozen=True)
class SafetensorsFile:
    """A safetensors file whose header has been validated against the file's size."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_bytes: int  # bytes of tensor data the header accounts for


def read_header(path: Path) -> SafetensorsFile:
    """Parse and validate the header; raise CheckpointError naming the file and the fault."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: {size} bytes, too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise CheckpointError(f"{path}: header length {n} exceeds the file size {size} (truncated or not safetensors)")
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors, ranges = {}, []
    for name, entry in header.items():
        dtype, shape, offsets = _entry_fields(path, name, entry)
        need = math.prod(shape) * dtype.itemsize
        if offsets[1] - offsets[0] != need:
            raise CheckpointError(f"{path}: tensor {name}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, "
                                  f"{dtype} {shape} needs {need}")
        tensors[name] = TensorInfo(name, tuple(shape), dtype, (path.name,))
        ranges.append((offsets[0], offsets[1], name))
    ranges.sort()
    for (_, end, a), (begin, _, b) in zip(ranges, ranges[1:]):
        if begin < end:
            raise CheckpointError(f"{path}: tensors {a} and {b} overlap in the data section")
        if begin > end:  # the format (and the safetensors library) requires the data fully covered
            raise CheckpointError(f"{path}: {begin - end} bytes of the data section between tensors {a} and {b} "
                                  "belong to no tensor")
    if ranges and ranges[0][0] > 0:
        raise CheckpointError(f"{path}: the data section's first {ranges[0][0]} bytes belong to no tensor")
    data_bytes = ranges[-1][1] if ranges else 0
    available = size - 8 - n
    if available < data_bytes:
        raise CheckpointError(f"{path}: data is short: the header needs {data_bytes} bytes of tensor data, "
                              f"the file has {available} (truncated download?)")
    if available > data_bytes:
        raise CheckpointError(f"{path}: {available - data_bytes} bytes after the {data_bytes} bytes of tensor data "
                              "the header describes (a damaged or concatenated file?)")
    return SafetensorsFile(path, tensors, dict(metadata), data_bytes)


def _entry_fields(path: Path, name: str, entry: Any) -> tuple[torch.dtype, list[int], list[int]]:
    where = f"{path}: tensor {name}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: header entry is not an object")
    dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise CheckpointError(f"{where}: unsupported dtype {entry.get('dtype')!r}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise CheckpointError(f"{where}: invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where}: invalid data_offsets {offsets!r}")
    return dtype, shape, offsets


def check_inside(index_file: Path, file: str) -> None:
    """An index may only name files inside its own directory: never an absolute path, `..`, or a
    drive. (Checked on the name, not the resolved path: a Hub cache snapshot's shards are symlinks
    into its blob store, which is fine.)"""
    pure = PurePosixPath(file)
    if not file or pure.is_absolute() or ".." in pure.parts or "\\" in file or ":" in file:
        raise CheckpointError(f"{index_file}: weight_map names {file!r}, which is not a file inside "
                              f"{index_file.parent}; refusing to read it")


class HFWeights:
    """The weights of an HF directory (model.safetensors or index + shards) or one .safetensors file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._problems: list[str] = []
        self.notes: list[str] = []  # oddities that do not stop reading, e.g. shard files the index ignores
        self._files: dict[str, SafetensorsFile] = {}
        self._weight_map: dict[str, str] = {}
        self._open: dict[str, Any] = {}
        self._load()

    def _load(self) -> None:
        if self.path.is_file():
            self._add_file(self.path.name, self.path)
            return
        index_file, single = self.path / INDEX_NAME, self.path / SINGLE_NAME
        if index_file.is_file():
            self._load_index(index_file)
        elif single.is_file():
            self._add_file(SINGLE_NAME, single)
        else:
            raise CheckpointError(f"{self.path}: no {SINGLE_NAME} or {INDEX_NAME}")

    def _add_file(self, name: str, path: Path) -> None:
        try:
            st = read_header(path)
        except CheckpointError as exc:
            self._problems.append(str(exc))
            return
        self._files[name] = st
        for tensor in st.tensors:
            self._weight_map.setdefault(tensor, name)

    def _load_index(self, index_file: Path) -> None:
        try:
            index = json.loads(index_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{index_file}: not valid JSON ({exc})") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise CheckpointError(f"{index_file}: not a safetensors index (no \"weight_map\" of tensor -> file)")
        for file in sorted(set(weight_map.values())):
            check_inside(index_file, file)
            if not (self.path / file).is_file():
                named = [t for t, f in weight_map.items() if f == file]
                self._problems.append(f"{index_file}: names {file}, which is missing ({len(named)} tensors, e.g. {named[0]})")
            else:
                self._add_file(file, self.path / file)
        for tensor, file in weight_map.items():
            st = self._files.get(file)
            if st is not None and tensor not in st.tensors:
                self._problems.append(f"{index_file}: maps {tensor} to {file}, which does not contain it")
        for file, st in self._files.items():
            for tensor in st.tensors:
                if weight_map.get(tensor) != file:
                    self._problems.append(f"{self.path / file}: holds {tensor}, which the index maps to "
                                          f"{weight_map.get(tensor, 'nothing')}")
        named_files = set(weight_map.values())
        stray = sorted(p.name for p in self.path.glob("model*.safetensors") if p.name not in named_files)
        if stray:
            self.notes.append(f"{self.path}: {len(stray)} weight file(s) not named by {INDEX_NAME}, ignored "
                              f"(left over from another save?): {', '.join(stray)}")
        metadata = index.get("metadata")
        recorded = metadata.get("total_size") if isinstance(metadata, dict) else None
        # Without a recorded total, the tensors the index names must still account for every shard byte.
        total, what = (recorded, "metadata.total_size is") if recorded is not None else (
            sum(self._files[f].tensors[t].nbytes for t, f in weight_map.items()
                if f in self._files and t in self._files[f].tensors),
            "has no metadata.total_size; the tensors it names need")
        actual = sum(st.data_bytes for st in self._files.values())
        if not self._problems and total != actual:
            self._problems.append(f"{index_file}: {what} {total}, the shards hold {actual} bytes of tensors")
        self._weight_map = {t: f for t, f in weight_map.items() if f in self._files and t in self._files[f].tensors}

    def problems(self) -> list[str]:
        return list(self._problems)

    def check(self) -> None:
        if self._problems:
            raise CheckpointError(f"{self.path}: HF weights are incomplete or damaged: " + "; ".join(self._problems))

    def inventory(self) -> dict[str, TensorInfo]:
        return {name: self._files[file].tensors[name] for name, file in sorted(self._weight_map.items())}

    def tensors(self) -> Iterator[tuple[str, Path, torch.Tensor]]:
        """Every tensor as (name, file, tensor), one at a time, after checking the files."""
        self.check()
        for name, file in sorted(self._weight_map.items()):
            yield name, self._files[file].path, self.read_tensor(name)

    def read_tensor(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        file = self._weight_map.get(name)
        if file is None:
            raise CheckpointError(f"{self.path}: no tensor {name!r}")
        try:
            if file not in self._open:
                self._open[file] = safe_open(str(self._files[file].path), framework="pt")
            return self._open[file].get_tensor(name)
        except Exception as exc:  # safetensors raises its own error type for unreadable data
            raise CheckpointError(f"{self.path / file}: cannot read tensor {name} ({exc})") from None


# ---------------------------------------------------------------------------------- writing
def parse_size(text: str) -> int:
    """'5GB' -> 5e9, '500MiB' -> 500 * 2**20, '1000' -> 1000 (the units transformers accepts)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    s = text.strip().upper().replace(" ", "")
    number = s.rstrip("KMGTIB")
    try:
        value = int(float(number) * units[s[len(number):]])
    except (ValueError, KeyError):
        raise CheckpointError(f"shard size {text!r}: expected e.g. 5GB, 500MB, 2GiB or a number of bytes") from None
    if value <= 0:
        raise CheckpointError(f"shard size {text!r}: must be positive")
    return value


def plan_shards(sizes: list[tuple[str, int]], shard_size: int) -> list[list[str]]:
    """Fill shards greedily in order; a tensor larger than `shard_size` gets a shard of its own."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if shards[-1] and used + nbytes > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


def shard_names(n: int) -> list[str]:
    return [SINGLE_NAME] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def write_index(directory: Path, weight_map: dict[str, str], total_size: int) -> None:
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def write_weights(directory: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                  rows: Callable[[str], Iterable[torch.Tensor]], shard_size: int = DEFAULT_SHARD_SIZE,
                  written: Callable[[str, int], None] | None = None) -> None:
    """HF weight files for `entries` (name, dtype, shape), in shards of at most `shard_size` bytes
    with an index when there are several. Each tensor is asked of `rows(name)` (whole or as row
    blocks) only when its turn comes, in the order of `entries`, and dropped once written, so
    memory holds one tensor at a time; `written(name, nbytes)` follows each tensor."""
    by_name = {name: (dtype, shape) for name, dtype, shape in entries}
    sizes = [(name, math.prod(shape) * dtype.itemsize) for name, dtype, shape in entries]
    nbytes = dict(sizes)
    shards = plan_shards(sizes, shard_size)
    weight_map = {}
    for file, names in zip(shard_names(len(shards)), shards):
        with SafetensorsWriter(directory / file, [(n, *by_name[n]) for n in names]) as writer:
            for name in names:
                writer.write(name, rows(name))
                weight_map[name] = file
                if written:
                    written(name, nbytes[name])
    if len(shards) > 1:
        write_index(directory, weight_map, sum(nbytes.values()))


@dataclass
class SafetensorsWriter:
    """Writes one safetensors file tensor by tensor, in the order given.

    `safetensors.torch.save_file` needs every tensor of a file in memory at once, which for 5 GB
    shards is 5 GB of RAM. All names, dtypes and shapes are known before any data is read, so the
    header (the same format safetensors writes: 8-byte length, JSON padded with spaces to a
    multiple of 8, offsets relative to the data section) is written first and each tensor's bytes
    are appended as soon as that tensor exists; peak memory is one tensor."""

    path: Path
    entries: list[tuple[str, torch.dtype, tuple[int, ...]]]
    metadata: dict[str, str] = field(default_factory=lambda: {"format": "pt"})

    def __post_init__(self) -> None:
        header: dict[str, Any] = {"__metadata__": self.metadata}
        offset = 0
        for name, dtype, shape in self.entries:
            end = offset + math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": SAFETENSORS_CODES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
            offset = end
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._end = 8 + len(raw) + offset
        self._next = 0
        self._file: BinaryIO = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, pieces: Iterable[torch.Tensor]) -> None:
        """Append the next tensor, given whole (`[tensor]`) or as row blocks in order."""
        expected_name, dtype, shape = self.entries[self._next]
        rows = 0
        for piece in pieces:
            if name != expected_name or piece.dtype != dtype or tuple(piece.shape[1:]) != shape[1:] or (
                    piece.dim() == 0) != (len(shape) == 0):
                raise CheckpointError(f"{self.path}: got {name} {piece.dtype} {list(piece.shape)}, the header "
                                      f"promised {expected_name} {dtype} {list(shape)}")
            rows += piece.shape[0] if piece.dim() else 1
            if piece.numel():
                self._file.write(memoryview(piece.contiguous().reshape(-1).view(torch.uint8).numpy()))
        if rows != (shape[0] if shape else 1):
            raise CheckpointError(f"{self.path}: {name}: got {rows} rows, the header promised {list(shape)}")
        self._next += 1

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type: type | None, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()

    def close(self) -> None:
        written = self._file.tell()
        self._file.close()
        if self._next != len(self.entries) or written != self._end:
            raise CheckpointError(f"{self.path}: wrote {self._next} of {len(self.entries)} tensors "
                                  f"({written} of {self._end} bytes)")

"""Read torch.distributed.checkpoint (DCP) directories one tensor at a time, without olmo_core.

The metadata comes from the allow-list reader in `dcp_metadata`. Each stored item is then read
from its byte range: an item is a complete `torch.save` archive, loaded with `weights_only=True`
through a bounded file view, so reading one tensor touches only that tensor's bytes. torch's loader
ignores the CRC-32s the archive records, so they are checked here: flipped bytes would otherwise
load silently.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import zstandard

from bolmo.checkpoint.dcp_metadata import read_metadata
from bolmo.checkpoint.inventory import Chunk, TensorInfo, listed
from bolmo.checkpoint.interrupts import signals_held
from bolmo.errors import CheckpointError

_ZIP_MAGIC = b"PK\x03\x04"  # every torch.save archive starts with a zip local-file header
_STORAGE_RECORD = re.compile(r"[^/]*/data/[^/]+")  # torch.save writes each storage to <archive>/data/<key>
_ZSTD = "stream.zstd"  # torch's one stream extension: FileSystemWriter(_extensions=[ZStandard()])


class _UnsupportedItem(CheckpointError):
    """An item in a storage format bolmo does not read; a whole save is written in one format."""


# ---------------------------------------------------------------------------------- file view
class _ByteRange(io.RawIOBase):
    """A read-only, seekable view of [start, start + length) of an open file, for torch.load."""

    def __init__(self, file: io.BufferedReader, start: int, length: int) -> None:
        super().__init__()
        self._file, self._start, self._length, self._pos = file, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:  # torch reads tensor data straight into its storage here
        n = max(0, min(len(buffer), self._length - self._pos))
        if n == 0:
            return 0
        self._file.seek(self._start + self._pos)
        got = self._file.readinto(memoryview(buffer).cast("B")[:n])
        self._pos += got
        return got


# ---------------------------------------------------------------------------------- reader
class DCPCheckpoint:
    """A DCP directory: `.inventory()` from metadata, `.read_tensor(name)` / `.read_object(name)`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries, self.version = read_metadata(self.path)

    # ------------------------------------------------------------------ what is stored
    def inventory(self) -> dict[str, TensorInfo]:
        """Every stored name (flattened, e.g. `model.blocks.0.w_q.weight`, `step`) and what it is."""
        return dict(self._entries)

    def prefixes(self) -> dict[str, int]:
        """Top-level prefixes (`model`, `ema`, `optim` ...) with their tensor counts."""
        counts: dict[str, int] = {}
        for info in self._entries.values():
            if info.is_tensor:
                prefix = info.name.split(".")[0]
                counts[prefix] = counts.get(prefix, 0) + 1
        return counts

    def files(self) -> dict[str, int]:
        """Each data file named by the metadata -> the least size it must have."""
        need: dict[str, int] = {}
        for info in self._entries.values():
            for chunk in info.chunks:
                need[chunk.file] = max(need.get(chunk.file, 0), chunk.offset + chunk.length)
        return need

    def problems(self, check_items: bool = False) -> list[str]:
        """Structural problems: missing or short data files, chunks that do not tile their tensor,
        storage extensions bolmo cannot undo, and, with `check_items` (which reads every byte), items
        that overlap in their file or do not load as the metadata describes them (not a torch.save
        archive, a CRC-32 mismatch, a wrong recorded length, another shape or dtype)."""
        out: list[str] = []
        by_file: dict[str, list[str]] = {}
        for info in self._entries.values():
            for chunk in info.chunks:
                by_file.setdefault(chunk.file, []).append(info.name)
        for name, need in sorted(self.files().items()):
            file = self.path / name
            if not file.is_file():
                affected = sorted(set(by_file[name]))
                out.append(f"{file}: data file named by the metadata is missing "
                           f"({len(affected)} entries affected, e.g. {affected[0]})")
            elif (size := file.stat().st_size) < need:
                out.append(f"{file}: file is {size} bytes, the metadata needs at least {need} (truncated copy or download?)")
        for info in self._entries.values():
            if info.is_tensor and (msg := _coverage_problem(info)):
                out.append(f"{self.path}: tensor {info.name}: {msg}")
        chunks = [c for info in self._entries.values() for c in info.chunks]
        if unknown := sorted({d for c in chunks for d in c.transforms if not _readable(d)}):
            out.append(f"{self.path}: items were saved with DCP extension(s) {', '.join(unknown)}, which bolmo "
                       f"does not read (it reads {_ZSTD}/1)")
        if check_items and not out:
            out.extend(self._item_problems())
        return out

    def check(self) -> None:
        """Raise one CheckpointError listing every structural problem (before anything is read)."""
        problems = self.problems()
        if problems:
            raise CheckpointError("checkpoint is incomplete or damaged:" + listed(problems))

    def _item_problems(self) -> list[str]:
        """Load every item, one at a time (memory: one chunk), and compare neighbouring byte ranges."""
        out: list[str] = []
        by_file: dict[str, list[tuple[TensorInfo, Chunk]]] = {}
        for info in self._entries.values():
            for chunk in info.chunks:
                by_file.setdefault(chunk.file, []).append((info, chunk))
        for items in by_file.values():
            items.sort(key=lambda item: (item[1].offset, item[1].length))
            for info, chunk in items:
                try:
                    (self._checked_piece if info.is_tensor else self._load_item)(info, chunk)
                except CheckpointError as exc:
                    out.append(str(exc))
                    if isinstance(exc, _UnsupportedItem):
                        break  # the whole file is in that format: one message, and its ranges mean nothing
            else:
                out += [f"{self.path / a.file}: {_label(a_info, a)} and {_label(b_info, b)} overlap"
                        for (a_info, a), (b_info, b) in zip(items, items[1:]) if b.offset < a.offset + a.length]
        return out

    # ------------------------------------------------------------------ data
    def _entry(self, name: str) -> TensorInfo:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no entry {name!r} in the checkpoint") from None

    def _where(self, info: TensorInfo, chunk: Chunk) -> str:
        return f"{self.path / chunk.file}: {_label(info, chunk)}"

    def _load_item(self, info: TensorInfo, chunk: Chunk) -> Any:
        """One stored item, loaded with weights_only=True and checked against the CRC-32s of its archive."""
        file, where = self.path / chunk.file, self._where(info, chunk)
        try:
            with signals_held(), open(file, "rb") as f:  # Ctrl-C inside torch's reader would pose as damage
                stream = _item_stream(f, chunk, where)
                with _open_archive(stream, where) as archive:
                    storage = _check_records(archive, info.is_tensor)
                stream.seek(0)
                value = torch.load(stream, weights_only=True, map_location="cpu")
        except CheckpointError:
            raise
        except FileNotFoundError:
            raise CheckpointError(f"{file}: data file named by the metadata is missing") from None
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{where}: not loadable with weights_only=True ({exc})") from None
        except zipfile.BadZipFile as exc:
            raise CheckpointError(f"{where}: corrupt item ({exc}; damaged bytes, or a byte range in the "
                                  "metadata that is not the archive's)") from None
        except Exception as exc:  # zstandard and torch's zip reader have their own error types
            raise CheckpointError(f"{where}: corrupt item ({type(exc).__name__}: {exc})") from None
        if storage is not None and isinstance(value, torch.Tensor):
            crc = zlib.crc32(_storage_bytes(value))
            if crc != storage.CRC:
                raise CheckpointError(f"{where}: corrupt item: the tensor data ({storage.filename}) has CRC-32 "
                                      f"{crc:08x}, the archive records {storage.CRC:08x}")
        return value

    def _tensor_entry(self, name: str) -> TensorInfo:
        info = self._entry(name)
        if not info.is_tensor:
            raise CheckpointError(f"{self.path}: {name!r} is a pickled object, not a tensor")
        if msg := _coverage_problem(info):
            raise CheckpointError(f"{self.path}: tensor {name}: {msg}")
        return info

    def read_tensor(self, name: str) -> torch.Tensor:
        """The full tensor, assembled from its chunks (peak memory: the tensor plus one chunk)."""
        info = self._tensor_entry(name)
        if len(info.chunks) == 1:  # the common unsharded case: no extra copy
            return self._checked_piece(info, info.chunks[0])
        full = torch.empty(info.shape, dtype=info.dtype)
        for chunk in info.chunks:
            if 0 in chunk.sizes:
                continue
            piece = self._checked_piece(info, chunk)
            full[tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes))] = piece
            del piece
        return full

    def read_rows(self, name: str) -> Iterator[torch.Tensor]:
        """The tensor as consecutive row blocks whose concatenation along dim 0 is the tensor.

        FSDP shards split dim 0, so each stored chunk already is such a block: yielding the chunks
        in row order lets a writer stream them without ever assembling the tensor (peak: one chunk).
        Tensors split any other way are yielded whole."""
        info = self._tensor_entry(name)
        if not _is_row_split(info):
            yield self.read_tensor(name)
            return
        for chunk in sorted(info.chunks, key=lambda c: c.offsets):
            if chunk.sizes[0]:
                yield self._checked_piece(info, chunk)

    def _checked_piece(self, info: TensorInfo, chunk: Chunk) -> torch.Tensor:
        piece = self._load_item(info, chunk)
        if not isinstance(piece, torch.Tensor):
            raise CheckpointError(f"{self._where(info, chunk)}: holds {type(piece).__name__}, not a tensor")
        if tuple(piece.shape) != chunk.sizes or piece.dtype != info.dtype:
            raise CheckpointError(f"{self._where(info, chunk)}: is {piece.dtype} {list(piece.shape)}, "
                                  f"the metadata says {info.dtype} {list(chunk.sizes)}")
        return piece

    def read_object(self, name: str) -> Any:
        """A pickled non-tensor item (e.g. `step`, `optim.param_groups.0.lr`), plain values only."""
        info = self._entry(name)
        if info.is_tensor:
            raise CheckpointError(f"{self.path}: {name!r} is a tensor; use read_tensor")
        return self._load_item(info, info.chunks[0])

    def iter_tensors(self, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for every tensor under `prefix.`, one at a time."""
        for name, info in self._entries.items():
            if info.is_tensor and name.startswith(prefix + "."):
                yield name, self.read_tensor(name)


# ---------------------------------------------------------------------------------- items
def _label(info: TensorInfo, chunk: Chunk) -> str:
    return f"item {info.name}@{list(chunk.offsets)} [{chunk.offset}, +{chunk.length})"


def _readable(descriptor: str) -> bool:
    """A DCP extension descriptor ("name/version") this reader undoes: torch's zstd, version 1.x."""
    name, _, version = descriptor.partition("/")
    return name == _ZSTD and version.partition(".")[0] == "1"


def _item_stream(f: io.BufferedReader, chunk: Chunk, where: str) -> io.RawIOBase | io.BytesIO:
    """The item as a seekable stream: a view of its byte range or, for an item that DCP's zstd
    extension compressed, its decompressed bytes in memory (torch.load needs to seek)."""
    stream: io.RawIOBase | io.BytesIO = _ByteRange(f, chunk.offset, chunk.length)
    for descriptor in chunk.transforms:
        if not _readable(descriptor):
            raise _UnsupportedItem(f"{where}: saved with DCP extension {descriptor!r}, which bolmo does not read")
        stream = io.BytesIO(zstandard.ZstdDecompressor().stream_reader(stream).read())
    return stream


def _open_archive(stream: io.RawIOBase | io.BytesIO, where: str) -> zipfile.ZipFile:
    """The item's zip directory (only the directory is read), once the item is known to be an archive."""
    head = stream.read(9)
    if head[:4] != _ZIP_MAGIC:
        if head[8:9] == b"{":  # an 8-byte header length, then JSON: a safetensors blob
            raise _UnsupportedItem(f"{where}: holds safetensors data, not a torch.save archive: the checkpoint "
                                   "was saved with serialization_format=SAFETENSORS, which bolmo does not read "
                                   "(save with the default torch.save format)")
        raise CheckpointError(f"{where}: corrupt item: not a torch.save archive")
    stream.seek(0)
    return zipfile.ZipFile(stream)


def _check_records(archive: zipfile.ZipFile, tensor: bool) -> zipfile.ZipInfo | None:
    """Check the CRC-32 of every record except a tensor's one storage, and return that record: its
    CRC is checked on the bytes torch loads, so the data is read once. The other records are small.
    A storage written on a machine of the other byte order is swapped by torch, so it is checked here."""
    records = archive.infolist()
    storages = [r for r in records if _STORAGE_RECORD.fullmatch(r.filename)]
    order = next((archive.read(r) for r in records if r.filename.endswith("/byteorder")), sys.byteorder.encode())
    deferred = storages[0] if tensor and len(storages) == 1 and order == sys.byteorder.encode() else None
    for record in records:
        if record is not deferred:
            archive.read(record)  # zipfile raises BadZipFile on a CRC-32 mismatch
    return deferred


def _storage_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of the tensor's whole storage (what torch.save wrote as its data record), not copied."""
    return memoryview(torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage()).numpy())


# ---------------------------------------------------------------------------------- helpers
def _coverage_problem(info: TensorInfo) -> str | None:
    """Chunks must tile the tensor exactly: inside it, no overlap, nothing left uncovered."""
    ndim = len(info.shape)
    for c in info.chunks:
        if len(c.offsets) != ndim or len(c.sizes) != ndim or any(
            o < 0 or s < 0 or o + s > dim for o, s, dim in zip(c.offsets, c.sizes, info.shape)
        ):
            return f"chunk at {list(c.offsets)} size {list(c.sizes)} lies outside shape {list(info.shape)}"
    covered = sum(math.prod(c.sizes) for c in info.chunks)
    if covered != info.numel:
        return f"chunks cover {covered} of {info.numel} elements"
    boxes = sorted((c for c in info.chunks if math.prod(c.sizes)), key=lambda c: c.offsets)
    if _is_row_split(info):
        overlaps = any(a.offsets[0] + a.sizes[0] > b.offsets[0] for a, b in zip(boxes, boxes[1:]))
    else:
        overlaps = any(_intersect(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    return "chunks overlap" if overlaps else None


def _is_row_split(info: TensorInfo) -> bool:
    """Every chunk spans all of dims 1.. (the FSDP layout: shards are blocks of rows)."""
    ndim = len(info.shape)
    return ndim > 0 and all(c.offsets[1:] == (0,) * (ndim - 1) and c.sizes[1:] == info.shape[1:] for c in info.chunks)


def _intersect(a: Chunk, b: Chunk) -> bool:
    return all(max(ao, bo) < min(ao + asz, bo + bsz)
               for ao, asz, bo, bsz in zip(a.offsets, a.sizes, b.offsets, b.sizes))

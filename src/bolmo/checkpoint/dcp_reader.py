"""Read torch.distributed.checkpoint (DCP) directories one tensor at a time, without olmo_core.

The metadata comes from the allow-list reader in `dcp_metadata`. Each stored item is then read
from its byte range: an item is a complete `torch.save` archive, loaded with `weights_only=True`
through a bounded file view, so reading one tensor touches only that tensor's bytes.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bolmo.checkpoint.dcp_metadata import read_metadata
from bolmo.checkpoint.inventory import Chunk, TensorInfo
from bolmo.errors import CheckpointError

_ZIP_MAGIC = b"PK\x03\x04"  # every torch.save archive starts with a zip local-file header


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
        and (with `check_items`) byte ranges that do not start a torch.save archive."""
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
        if check_items and not out:
            out.extend(self._item_header_problems())
        return out

    def check(self) -> None:
        """Raise one CheckpointError listing every structural problem (before anything is read)."""
        problems = self.problems()
        if problems:
            raise CheckpointError("checkpoint is incomplete or damaged:\n  " + "\n  ".join(problems))

    def _item_header_problems(self) -> list[str]:
        out = []
        for info in self._entries.values():
            for chunk in info.chunks:
                with open(self.path / chunk.file, "rb") as f:
                    f.seek(chunk.offset)
                    if f.read(4) != _ZIP_MAGIC:
                        out.append(f"{self.path / chunk.file}: item {info.name}@{list(chunk.offsets)} at "
                                   f"[{chunk.offset}, +{chunk.length}) is not a torch.save archive")
        return out

    # ------------------------------------------------------------------ data
    def _entry(self, name: str) -> TensorInfo:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no entry {name!r} in the checkpoint") from None

    def _load_item(self, info: TensorInfo, chunk: Chunk) -> Any:
        file = self.path / chunk.file
        where = f"{file}: item {info.name}@{list(chunk.offsets)} [{chunk.offset}, +{chunk.length})"
        try:
            with open(file, "rb") as f:
                return torch.load(_ByteRange(f, chunk.offset, chunk.length), weights_only=True, map_location="cpu")
        except FileNotFoundError:
            raise CheckpointError(f"{file}: data file named by the metadata is missing") from None
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{where}: not loadable with weights_only=True ({exc})") from None
        except Exception as exc:  # torch's zip reader raises RuntimeError for damaged archives
            raise CheckpointError(f"{where}: corrupt item ({type(exc).__name__}: {exc})") from None

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
            raise CheckpointError(f"{self.path / chunk.file}: item {info.name}@{list(chunk.offsets)} "
                                  f"holds {type(piece).__name__}, not a tensor")
        if tuple(piece.shape) != chunk.sizes or piece.dtype != info.dtype:
            raise CheckpointError(
                f"{self.path / chunk.file}: item {info.name}@{list(chunk.offsets)} is "
                f"{piece.dtype} {list(piece.shape)}, the metadata says {info.dtype} {list(chunk.sizes)}"
            )
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

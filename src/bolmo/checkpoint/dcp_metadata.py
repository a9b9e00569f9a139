"""Read a DCP `.metadata` pickle safely, without importing olmo_core or anything else.

torch's own reader cannot open OLMo-core checkpoints: their pickled `.metadata` names a class
inside `olmo_core` (not installed), and with olmo_core installed torch 2.13 trips over a missing
attribute of that class. Here an allow-list unpickler maps the known metadata classes (torch's and
OLMo-core's copy of `_StorageInfo`) to small local stand-ins and refuses every other global: a
pickle from a download is code, and nothing outside the list is ever imported or called.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path, PurePath
from typing import Any

import torch

from bolmo.checkpoint.inventory import Chunk, TensorInfo
from bolmo.checkpoint.layout import DCP_SUBDIR
from bolmo.errors import CheckpointError


class _Record:
    """Stand-in for a pickled metadata dataclass: keeps the attributes the pickle sets, nothing runs."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slots state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected state for {type(self).__name__}: {type(state).__name__}")
        self.__dict__.update(state)


class _Metadata(_Record):
    pass


class _TensorStorage(_Record):
    pass


class _BytesStorage(_Record):
    pass


class _ChunkStorage(_Record):
    pass


class _StorageMeta(_Record):
    pass


class _MetadataIndex(_Record):
    pass


class _StorageInfo(_Record):
    pass


class _TensorProperties:
    """torch pickles TensorProperties as a tuple (dtype, layout, requires_grad, memory format, pinned)."""

    def __setstate__(self, state: Any) -> None:
        self.dtype = state[0] if isinstance(state, tuple) else state.get("dtype")


def _passthrough(value: Any) -> Any:
    """Stand-in for enum/layout constructors whose values the reader never needs."""
    return value


def _path(*parts: str) -> str:
    return str(PurePath(*parts))


_MD = "torch.distributed.checkpoint.metadata"
_ALLOWED: dict[tuple[str, str], Any] = {
    (_MD, "Metadata"): _Metadata,
    (_MD, "TensorStorageMetadata"): _TensorStorage,
    (_MD, "BytesStorageMetadata"): _BytesStorage,
    (_MD, "ChunkStorageMetadata"): _ChunkStorage,
    (_MD, "TensorProperties"): _TensorProperties,
    (_MD, "_MEM_FORMAT_ENCODING"): _passthrough,
    (_MD, "StorageMeta"): _StorageMeta,
    (_MD, "MetadataIndex"): _MetadataIndex,
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    # OLMo-core's writer pickles its own copy of _StorageInfo (relative_path, offset, length).
    ("olmo_core.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch.serialization", "_get_layout"): _passthrough,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): dict,
    **{("pathlib", cls): _path for cls in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")},
}


class _Refused(pickle.UnpicklingError):
    pass


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise _Refused(f"{module}.{name}")


_RANK_METADATA = re.compile(r"__\d+\.metadata")  # torch's name for rank R's metadata: __R.metadata


def read_metadata(directory: Path) -> tuple[dict[str, TensorInfo], str | None]:
    """Every entry of `directory/.metadata` with its chunks and byte ranges, and the DCP version.

    Without `.metadata`, the rank-local `__R.metadata` files are read and merged instead."""
    file = directory / ".metadata"
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    if file.is_file():
        return _read_metadata_file(file)
    rank_files = sorted((p for p in directory.glob("__*.metadata") if _RANK_METADATA.fullmatch(p.name)),
                        key=lambda p: _file_order(p.name))
    if rank_files:
        return _merge_rank_local(rank_files)
    raise CheckpointError(_missing_metadata_message(directory))


def _merge_rank_local(files: list[Path]) -> tuple[dict[str, TensorInfo], str | None]:
    """`dcp.save(..., use_collectives=False)` has no coordinator: each rank R writes `__R.metadata`
    describing only the items it saved (torch's loader reads its own rank's file). Together they
    describe the checkpoint: tensors get every rank's chunks (a replicated tensor, saved by every
    rank, keeps the lowest rank's copy) and a non-tensor value the lowest rank's copy. A rank
    whose file is missing shows up as chunks that do not cover their tensor."""
    merged: dict[str, TensorInfo] = {}
    version: str | None = None
    for file in files:
        entries, version = _read_metadata_file(file)
        for name, info in entries.items():
            have = merged.setdefault(name, info)
            if have is info or (not info.is_tensor and not have.is_tensor):
                continue
            if (info.shape, info.dtype) != (have.shape, have.dtype):
                raise CheckpointError(f"{file}: entry {name!r} is {_describe(info)}, a lower rank's metadata "
                                      f"says {_describe(have)}")
            known = {(c.offsets, c.sizes) for c in have.chunks}
            chunks = have.chunks + tuple(c for c in info.chunks if (c.offsets, c.sizes) not in known)
            data_files = tuple(sorted({c.file for c in chunks}, key=_file_order))
            merged[name] = TensorInfo(name, have.shape, have.dtype, data_files, chunks)
    return merged, version


def _describe(info: TensorInfo) -> str:
    return f"{info.dtype} {list(info.shape)}" if info.is_tensor else "a pickled object"


def _read_metadata_file(file: Path) -> tuple[dict[str, TensorInfo], str | None]:
    """One `.metadata` or `__R.metadata` pickle, through the allow-list unpickler."""
    raw = file.read_bytes()
    try:
        md = _AllowListUnpickler(io.BytesIO(raw)).load()
    except _Refused as exc:
        raise CheckpointError(
            f"{file}: refers to class {exc} which is not a known checkpoint metadata class; refusing to unpickle it"
        ) from None
    except Exception as exc:  # truncated or garbled pickles raise many different types
        raise CheckpointError(f"{file}: corrupt DCP metadata ({len(raw)} bytes): {type(exc).__name__}: {exc}") from None
    if not isinstance(md, _Metadata) or not isinstance(getattr(md, "state_dict_metadata", None), dict):
        raise CheckpointError(f"{file}: not a torch.distributed.checkpoint Metadata object")
    try:
        return _entries_from_metadata(md, file), getattr(md, "version", None)
    except (AttributeError, TypeError, ValueError) as exc:  # a field missing or of the wrong kind
        raise CheckpointError(f"{file}: unexpected DCP metadata layout ({type(exc).__name__}: {exc})") from None


def _missing_metadata_message(path: Path) -> str:
    msg = f"{path}: not a DCP checkpoint: {path / '.metadata'} is missing"
    if (path / DCP_SUBDIR / ".metadata").is_file():
        return msg + f" (the checkpoint is in {path / DCP_SUBDIR})"
    if any(path.glob("__*.distcp")):
        return msg + " but .distcp data files exist: incomplete save or copy (hidden files not copied?)"
    return msg


def _entries_from_metadata(md: _Metadata, file: Path) -> dict[str, TensorInfo]:
    """Join `state_dict_metadata` (what) with `storage_data` (where) into TensorInfo records."""
    storage: dict[tuple[str, tuple[int, ...] | None], _StorageInfo] = {}
    for index, info in (getattr(md, "storage_data", None) or {}).items():
        offset = getattr(index, "offset", None)
        storage[(index.fqn, tuple(offset) if offset is not None else None)] = info
    entries: dict[str, TensorInfo] = {}
    for name, meta in md.state_dict_metadata.items():
        if isinstance(meta, _BytesStorage):
            where = storage.get((name, None))
            if where is None:
                raise CheckpointError(f"{file}: object {name!r} has no storage entry")
            chunk = _chunk(name, (), (), where, file)
            entries[name] = TensorInfo(name, (), None, (chunk.file,), (chunk,))
            continue
        if not isinstance(meta, _TensorStorage) or not isinstance(getattr(meta, "properties", None), _TensorProperties):
            raise CheckpointError(f"{file}: entry {name!r} has unexpected metadata {type(meta).__name__}")
        chunks = []
        for c in meta.chunks:
            where = storage.get((name, tuple(c.offsets)))
            if where is None:
                raise CheckpointError(f"{file}: chunk {list(c.offsets)} of tensor {name!r} has no storage entry")
            chunks.append(_chunk(name, tuple(c.offsets), tuple(c.sizes), where, file))
        files = tuple(sorted({c.file for c in chunks}, key=_file_order))
        entries[name] = TensorInfo(name, tuple(meta.size), meta.properties.dtype, files, tuple(chunks))
    return entries


def _chunk(name: str, offsets: tuple[int, ...], sizes: tuple[int, ...], where: _StorageInfo, file: Path) -> Chunk:
    path = where.relative_path
    if not isinstance(path, str) or not path or PurePath(path).is_absolute() or ".." in PurePath(path).parts:
        # metadata comes with downloads: it must not make the reader open files elsewhere
        raise CheckpointError(f"{file}: entry {name!r} names data file {path!r}, which is not inside the "
                              "checkpoint directory (absolute paths and '..' are refused)")
    transforms = tuple(getattr(where, "transform_descriptors", None) or ())
    return Chunk(offsets, sizes, path, int(where.offset), int(where.length), transforms)


def _file_order(name: str) -> list[Any]:
    """Natural order, so __2_0 sorts before __10_0."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

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


def read_metadata(directory: Path) -> tuple[dict[str, TensorInfo], str | None]:
    """Every entry of `directory/.metadata` with its chunks and byte ranges, and the DCP version."""
    file = directory / ".metadata"
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    if not file.is_file():
        raise CheckpointError(_missing_metadata_message(directory))
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
    if (path / "model_and_optim" / ".metadata").is_file():
        return msg + f" (the checkpoint is in {path / 'model_and_optim'})"
    if any(path.glob("__*.metadata")):
        return msg + " (only rank-local __N.metadata files exist: the save did not finish)"
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
            entries[name] = TensorInfo(name, (), None, (where.relative_path,), (_chunk((), (), where),))
            continue
        if not isinstance(meta, _TensorStorage) or not isinstance(getattr(meta, "properties", None), _TensorProperties):
            raise CheckpointError(f"{file}: entry {name!r} has unexpected metadata {type(meta).__name__}")
        chunks = []
        for c in meta.chunks:
            where = storage.get((name, tuple(c.offsets)))
            if where is None:
                raise CheckpointError(f"{file}: chunk {list(c.offsets)} of tensor {name!r} has no storage entry")
            chunks.append(_chunk(tuple(c.offsets), tuple(c.sizes), where))
        files = tuple(sorted({c.file for c in chunks}, key=_file_order))
        entries[name] = TensorInfo(name, tuple(meta.size), meta.properties.dtype, files, tuple(chunks))
    return entries


def _chunk(offsets: tuple[int, ...], sizes: tuple[int, ...], where: _StorageInfo) -> Chunk:
    return Chunk(offsets, sizes, where.relative_path, int(where.offset), int(where.length))


def _file_order(name: str) -> list[Any]:
    """Natural order, so __2_0 sorts before __10_0."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

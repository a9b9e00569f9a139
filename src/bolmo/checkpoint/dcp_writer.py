"""Write a DCP directory that OLMo-core and torch.distributed.checkpoint can load, tensor by tensor.

The layout is what a single-rank `dcp.save` produces: one data file `__0_0.distcp` in which every
tensor is one `torch.save` archive appended at a recorded byte range, and a pickled `.metadata`
built from torch's own metadata classes (so `FileSystemReader` and OLMo-core's reader accept it).
Each tensor is written as soon as it arrives, so memory stays at one tensor however large the model.
"""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import torch

from bolmo.errors import CheckpointError

DATA_FILE = "__0_0.distcp"


class DCPWriter:
    """`add(key, tensor)` for every tensor, then `close()` writes `.metadata` (the completeness marker)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = open(self.directory / DATA_FILE, "wb")
        self._tensors: dict[str, tuple[torch.dtype, torch.Size, int, int]] = {}

    def add(self, key: str, tensor: torch.Tensor) -> None:
        """Append one full (unsharded) tensor under the flattened key, e.g. `model.blocks.0.w_q.weight`."""
        if key in self._tensors:
            raise CheckpointError(f"{self.directory}: tensor {key} written twice")
        tensor = tensor.detach().cpu().contiguous()
        if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()  # torch.save stores the whole storage of a view
        offset = self._file.tell()
        torch.save(tensor, self._file)
        self._tensors[key] = (tensor.dtype, tensor.shape, offset, self._file.tell() - offset)

    def __enter__(self) -> "DCPWriter":
        return self

    def __exit__(self, exc_type: type | None, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()

    def close(self) -> None:
        from torch.distributed.checkpoint.filesystem import _StorageInfo
        from torch.distributed.checkpoint.metadata import (
            ChunkStorageMetadata,
            Metadata,
            MetadataIndex,
            StorageMeta,
            TensorProperties,
            TensorStorageMetadata,
        )

        self._file.close()
        state, storage, planner = {}, {}, {}
        for key, (dtype, shape, offset, length) in self._tensors.items():
            origin = torch.Size([0] * len(shape))
            state[key] = TensorStorageMetadata(TensorProperties(dtype=dtype), shape,
                                               [ChunkStorageMetadata(offsets=origin, sizes=shape)])
            storage[MetadataIndex(fqn=key, offset=origin, index=0)] = _StorageInfo(DATA_FILE, offset, length)
            prefix, _, rest = key.partition(".")
            planner[key] = (prefix, rest) if rest else (prefix,)
        metadata = Metadata(state_dict_metadata=state, planner_data=planner, storage_data=storage,
                            storage_meta=StorageMeta(save_id=uuid.uuid4().hex), version="1.0.0")
        with open(self.directory / ".metadata", "wb") as f:
            pickle.dump(metadata, f)

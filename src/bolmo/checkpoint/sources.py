"""Recognise what a path holds (OLMo-core Bolmo / OLMo 2-3, generic DCP, HF Bolmo / Olmo2-3, bare
safetensors) and open it with the right reader, so every command accepts any supported layout."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from bolmo.checkpoint.config_maps import model_family
from bolmo.checkpoint.dcp_reader import DCPCheckpoint
from bolmo.checkpoint.safetensors_io import HFWeights
from bolmo.config import read_json
from bolmo.errors import CheckpointError, ConfigError

DCP_SUBDIR = "model_and_optim"


class SourceKind(str, Enum):
    OLMO_CORE_BOLMO = "olmo-core (bolmo)"
    OLMO_CORE_OLMO = "olmo-core (olmo2/olmo3)"
    DCP = "dcp (generic)"
    HF_BOLMO = "hf (bolmo)"
    HF_OLMO = "hf (olmo2/olmo3)"
    SAFETENSORS = "safetensors (no known config)"


@dataclass
class Source:
    """An opened checkpoint: its kind, a tensor reader and (when there is one) its config."""

    path: Path  # the directory (or file) the user named
    kind: SourceKind
    reader: DCPCheckpoint | HFWeights
    config: dict[str, Any] | None = None
    config_path: Path | None = None

    @property
    def family(self) -> str | None:
        """'bolmo' / 'olmo' for model checkpoints, None for generic ones."""
        return {SourceKind.OLMO_CORE_BOLMO: "bolmo", SourceKind.HF_BOLMO: "bolmo",
                SourceKind.OLMO_CORE_OLMO: "olmo", SourceKind.HF_OLMO: "olmo"}.get(self.kind)

    @property
    def is_dcp(self) -> bool:
        return isinstance(self.reader, DCPCheckpoint)

    @property
    def root(self) -> Path:
        """The directory that holds config.json and side files such as a tokenizer."""
        return self.path if self.path.is_dir() else self.path.parent


def _dcp_dir(path: Path) -> Path:
    """`path/model_and_optim` for an OLMo-core step directory, else `path` (a model-only DCP)."""
    sub = path / DCP_SUBDIR
    return sub if sub.is_dir() else path


def open_checkpoint(path: str | Path) -> Source:
    """Open any supported checkpoint; raise CheckpointError / ConfigError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path}: not a checkpoint (expected a directory or a .safetensors file)")
        return Source(path, SourceKind.SAFETENSORS, HFWeights(path))
    config_path = path / "config.json"
    if config_path.is_file():
        config = read_json(config_path)
        if "model" in config:
            family = model_family(config, str(config_path))
            kind = SourceKind.OLMO_CORE_BOLMO if family == "bolmo" else SourceKind.OLMO_CORE_OLMO
            return Source(path, kind, DCPCheckpoint(_dcp_dir(path)), config, config_path)
        if "model_type" in config:
            kind = {"bolmo": SourceKind.HF_BOLMO, "olmo2": SourceKind.HF_OLMO,
                    "olmo3": SourceKind.HF_OLMO}.get(config["model_type"], SourceKind.SAFETENSORS)
            return Source(path, kind, HFWeights(path), config, config_path)
        raise ConfigError(f"{config_path}: neither an OLMo-core experiment config (no 'model' key) "
                          "nor an HF config (no 'model_type' key)")
    if (path / DCP_SUBDIR).is_dir() or (path / ".metadata").is_file() or any(path.glob("__*.distcp")):
        return Source(path, SourceKind.DCP, DCPCheckpoint(_dcp_dir(path)))
    if any(path.glob("*.safetensors")):
        return Source(path, SourceKind.SAFETENSORS, HFWeights(path))
    raise CheckpointError(f"{path}: not a checkpoint (no config.json, .metadata, .distcp or .safetensors files)")

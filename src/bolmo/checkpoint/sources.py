"""Recognise what a path holds (OLMo-core Bolmo / OLMo 2-3, generic DCP, HF Bolmo / Olmo2-3, bare
safetensors) and open it with the right reader, so every command accepts any supported layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from bolmo.checkpoint.config_maps import model_family, olmo_core_to_hf
from bolmo.checkpoint.dcp_reader import DCPCheckpoint
from bolmo.checkpoint.layout import DCP_SUBDIR
from bolmo.checkpoint.safetensors_io import HFWeights
from bolmo.config import read_json
from bolmo.errors import CheckpointError, ConfigError

ASSETS = Path(__file__).parent.parent / "assets"
DEFAULT_MODEL_DIR = ASSETS / "default_model"
# Models shipped inside the package, by the names every `--model`, `bolmo.load` and checkpoint command
# accept: the toy Bolmo and the subword OLMo 2 teacher it was byteified from (recipes/toy), so a
# Bolmo-vs-teacher comparison (`bolmo eval cute --model default --model default-teacher`) runs offline.
BUNDLED_MODELS = {"default": DEFAULT_MODEL_DIR, "default-teacher": ASSETS / "default_teacher"}


def bundled_or_path(source: str | Path | None) -> Path:
    """`source` as a path, or the directory of the bundled model it names (`default`,
    `default-teacher`; None: `default`) when no local path of that name exists: one rule for
    `bolmo.load` and every checkpoint command."""
    if source is not None:
        path = Path(source).expanduser()
        if str(source) not in BUNDLED_MODELS or path.exists():
            return path
    name = "default" if source is None else str(source)
    bundled = BUNDLED_MODELS[name]
    if not (bundled / "config.json").is_file():
        raise CheckpointError(f"the bundled model {name!r} is missing from {bundled}")
    return bundled


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
    notes: list[str] = field(default_factory=list)  # things the user should know that do not stop reading

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


@dataclass
class Layout:
    """What a path holds, decided from its file names and config.json alone (no weights opened)."""

    path: Path  # the directory (or file) to read: a step directory when `model_and_optim/` itself was named
    kind: SourceKind
    dcp_dir: Path | None  # the DCP directory for DCP kinds, else None (HF weights at `path`)
    config: dict[str, Any] | None = None
    config_path: Path | None = None
    notes: list[str] = field(default_factory=list)


def detect(path: str | Path) -> Layout:
    """Recognise any supported checkpoint; raise CheckpointError / ConfigError saying what is wrong.
    The one place a checkpoint's format is decided (`open_checkpoint`, `bolmo.load` and `bolmo info`
    all ask it). A bundled model's name reads that model (`bundled_or_path`).

    DCP files decide the layout before config.json does: a config.json that is unrelated, of
    another architecture or unreadable leaves a readable DCP directory readable (generically, with
    a note), instead of hiding it."""
    path = bundled_or_path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path}: not a checkpoint (expected a directory or a .safetensors file)")
        return Layout(path, SourceKind.SAFETENSORS, None)
    if path.name == DCP_SUBDIR and (path.parent / "config.json").is_file():
        return _dcp_subdir_layout(path)
    if _has_dcp_files(path):
        return _dcp_layout(path)
    config_path = path / "config.json"
    if config_path.is_file():
        config = read_json(config_path)
        if "model" in config:
            raise CheckpointError(f"{config_path}: an OLMo-core experiment config, but {path} has no {DCP_SUBDIR}/ "
                                  "and no .metadata or .distcp files (incomplete download or copy?)")
        if "model_type" in config:
            if not isinstance(config["model_type"], str):
                raise ConfigError(f"{config_path}: model_type: expected a string, got {config['model_type']!r}")
            kind = {"bolmo": SourceKind.HF_BOLMO, "olmo2": SourceKind.HF_OLMO,
                    "olmo3": SourceKind.HF_OLMO}.get(config["model_type"], SourceKind.SAFETENSORS)
            return Layout(path, kind, None, config, config_path)
        raise ConfigError(f"{config_path}: neither an OLMo-core experiment config (no 'model' key) "
                          "nor an HF config (no 'model_type' key)")
    if any(path.glob("*.safetensors")):
        return Layout(path, SourceKind.SAFETENSORS, None)
    raise CheckpointError(f"{path}: not a checkpoint (no config.json, .metadata, .distcp or .safetensors files)")


def open_checkpoint(path: str | Path) -> Source:
    """Open any supported checkpoint (see `detect`) with the right tensor reader."""
    layout = detect(path)
    if layout.dcp_dir is not None:
        return Source(layout.path, layout.kind, DCPCheckpoint(layout.dcp_dir), layout.config, layout.config_path,
                      layout.notes)
    weights = HFWeights(layout.path)
    return Source(layout.path, layout.kind, weights, layout.config, layout.config_path,
                  layout.notes + list(weights.notes))


def _dcp_dir(path: Path) -> Path:
    """`path/model_and_optim` for an OLMo-core step directory, else `path` (a model-only DCP)."""
    sub = path / DCP_SUBDIR
    return sub if sub.is_dir() else path


def _has_dcp_files(path: Path) -> bool:
    return ((path / DCP_SUBDIR).is_dir() or (path / ".metadata").is_file()
            or any(path.glob("__*.distcp")) or any(path.glob("__*.metadata")))


def _supported_family(config_path: Path) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(family, config, None) when config.json is an OLMo-core experiment config of a model family this
    toolkit converts; else (None, None, why it is not used). No config.json: (None, None, None)."""
    if not config_path.is_file():
        return None, None, None
    try:
        config = read_json(config_path)
        if "model" not in config:
            what = (f"an HF config (model_type {config['model_type']!r})" if "model_type" in config
                    else "not an OLMo-core experiment config (no 'model' key)")
            return None, None, f"{config_path}: {what}"
        return model_family(config, str(config_path)), config, None
    except ConfigError as exc:
        return None, None, str(exc)


def _dcp_layout(path: Path) -> Layout:
    """A DCP directory (model-only, or an OLMo-core step directory with model_and_optim/)."""
    config_path = path / "config.json"
    family, config, why_not = _supported_family(config_path)
    notes = _interrupted_save_notes(path.parent if path.name == DCP_SUBDIR else path)
    if family is None:
        if why_not:
            notes.insert(0, f"{why_not}; reading {path} as a generic DCP checkpoint (pick the tensors with --prefix)")
        elif (path / DCP_SUBDIR).is_dir():  # an OLMo-core step directory whose experiment config is gone
            notes.insert(0, f"{path} has {DCP_SUBDIR}/ but no config.json (an OLMo-core checkpoint's experiment "
                            "config): read as a generic DCP checkpoint, names as stored, no model config written")
        return Layout(path, SourceKind.DCP, _dcp_dir(path), notes=notes)
    kind = SourceKind.OLMO_CORE_BOLMO if family == "bolmo" else SourceKind.OLMO_CORE_OLMO
    return Layout(path, kind, _dcp_dir(path), config, config_path, notes)


def _dcp_subdir_layout(path: Path) -> Layout:
    """`step/model_and_optim` itself: the step directory's config.json gives HF names, the tokenizer's
    vocabulary and an HF config.json, so read the step directory when its config can be used."""
    family, config, why_not = _supported_family(path.parent / "config.json")
    if family is not None:
        try:
            olmo_core_to_hf(config, str(path.parent / "config.json"))
        except ConfigError as exc:
            why_not = str(exc)
        else:
            step = _dcp_layout(path.parent)
            step.notes.insert(0, f"{path} is the DCP directory of the OLMo-core checkpoint {path.parent}: "
                                 "reading that, with its config.json")
            return step
    layout = _dcp_layout(path)
    if why_not:
        layout.notes.insert(0, f"{why_not}; reading {path} as a generic DCP checkpoint")
    return layout


def _interrupted_save_notes(step: Path) -> list[str]:
    """OLMo-core saves into `stepN-tmp/` and writes `.metadata.json` last, then renames to `stepN/`:
    either sign means the save may not have finished."""
    if step.name.endswith("-tmp"):
        return [f"{step}: a '*-tmp' directory is a save that was interrupted before its final rename; "
                "the checkpoint may be incomplete"]
    if (step / "train").is_dir() and not (step / ".metadata.json").is_file():
        return [f"{step}: trainer checkpoint without .metadata.json (written last by OLMo-core): "
                "the save may have been interrupted; the checkpoint may be incomplete"]
    return []

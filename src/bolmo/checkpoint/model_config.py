"""Which model a checkpoint directory holds and its config, without reading any weights: the one
answer `bolmo.load`, `bolmo info` and the converter's model checks share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bolmo.checkpoint.config_maps import olmo_core_to_hf
from bolmo.checkpoint.sources import Layout, SourceKind, detect
from bolmo.config import BolmoConfig
from bolmo.errors import CheckpointError, ConfigError
from bolmo.olmo.config import OLMO_MODEL_TYPES, OlmoConfig

ModelConfig = BolmoConfig | OlmoConfig

# Kinds as `bolmo.load` names them; an HF subword model is named by its model_type (olmo2, olmo3).
_KIND_NAMES = {SourceKind.HF_BOLMO: "bolmo", SourceKind.OLMO_CORE_BOLMO: "bolmo-olmo-core",
               SourceKind.OLMO_CORE_OLMO: "olmo-core"}


def model_kind(path: str | Path) -> str:
    """'bolmo' (HF), 'bolmo-olmo-core', 'olmo-core', or the model_type of an HF config.json (olmo2,
    olmo3, or one no model here implements, which `read_model_config` refuses by name)."""
    return _kind(detect(path))


def _kind(layout: Layout) -> str:
    if layout.kind in _KIND_NAMES:
        return _KIND_NAMES[layout.kind]
    if layout.config is not None and "model_type" in layout.config:
        return str(layout.config["model_type"])
    why = "".join(f"; {note}" for note in layout.notes)
    raise CheckpointError(f"{layout.path}: a {layout.kind.value} checkpoint, with no config.json of a model "
                          f"(bolmo, olmo2, olmo3, or an OLMo-core config of one){why}")


def hf_model_config(hf: dict[str, Any], where: str) -> ModelConfig:
    """The config class of an HF config.json, parsed and validated."""
    model_type = hf.get("model_type")
    if model_type == "bolmo":
        return BolmoConfig.from_dict(hf, where)
    if model_type in OLMO_MODEL_TYPES:
        return OlmoConfig.from_dict(hf, where)
    raise ConfigError(f"{where}: model_type {model_type!r} is not a model bolmo implements "
                      f"(bolmo, {', '.join(OLMO_MODEL_TYPES)})")


def olmo_core_model_config(config: dict[str, Any], where: str) -> ModelConfig:
    """The HF-side config of an OLMo-core experiment config (Bolmo or OLMo 2 / Olmo 3)."""
    return hf_model_config(olmo_core_to_hf(config, where), where)


def read_model_config(path: str | Path) -> tuple[ModelConfig, str]:
    """(config, kind) of any directory `bolmo.load` accepts; `kind` as `model_kind` names it."""
    layout = detect(path)
    kind = _kind(layout)
    where = str(layout.config_path)
    if layout.kind in (SourceKind.OLMO_CORE_BOLMO, SourceKind.OLMO_CORE_OLMO):
        return olmo_core_model_config(layout.config, where), kind
    return hf_model_config(layout.config, where), kind

"""The HF BolmoConfig of a native OLMo-core Bolmo checkpoint's config (`bolmo.load` reads the
tensors through the converter's plan: HF names, HF shapes, same checks as `bolmo convert`)."""

from __future__ import annotations

from typing import Any

from bolmo.checkpoint.config_maps import model_family
from bolmo.checkpoint.model_config import olmo_core_model_config
from bolmo.config import BolmoConfig
from bolmo.errors import CheckpointError


def bolmo_config_from_olmo_core(config: dict[str, Any], where: str = "config.json") -> BolmoConfig:
    """The HF BolmoConfig of an OLMo-core experiment config (its `model` and `dataset.tokenizer`)."""
    if model_family(config, where) != "bolmo":
        raise CheckpointError(f"{where}: model.name is not 'bolmo'; this is not a Bolmo checkpoint")
    return olmo_core_model_config(config, where)

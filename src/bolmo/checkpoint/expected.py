"""The tensors a config says a checkpoint must hold, taken from the model code itself.

The model is built on the meta device (no memory, no initialisation), so the expected names and
shapes are exactly what loading will ask for; a hand-written list of expected keys could drift
from the model and pass a checkpoint the model cannot load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bolmo.checkpoint.model_config import ModelConfig, hf_model_config
from bolmo.config import BolmoConfig
from bolmo.errors import ConfigError
from bolmo.model.bolmo import BolmoForCausalLM
from bolmo.model.olmo import OlmoForCausalLM
from bolmo.olmo.config import OLMO_MODEL_TYPES


def meta_model(config: ModelConfig, where: str = "config.json") -> nn.Module:
    """The model a config describes, on the meta device: names, shapes, dtypes and parameter
    counts, no memory."""
    model_class = BolmoForCausalLM if isinstance(config, BolmoConfig) else OlmoForCausalLM
    return build_on_meta(model_class, config, where)


def build_on_meta(model_class: type[nn.Module], config: ModelConfig, where: str = "config.json") -> nn.Module:
    """`model_class(config)` on the meta device. Sizes that each pass validation can still describe
    a tensor whose byte count overflows 64 bits (hidden_size 10**12): torch then raises a RuntimeError
    from inside nn.Linear; that is the config's fault, so it is a ConfigError naming the sizes."""
    try:
        with torch.device("meta"):
            return model_class(config)
    except (RuntimeError, OverflowError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "overflow" not in message.lower():
            raise
        raise ConfigError(f"{where}: the sizes describe a tensor too large to build ({message})") from None


def expected_hf_tensors(hf_config: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """HF name -> meta tensor (shape and dtype, no data) for a Bolmo, Olmo2 or Olmo3 config.json (the
    project's own models, whose state-dict names are the HF ones)."""
    if hf_config.get("model_type") not in ("bolmo", *OLMO_MODEL_TYPES):
        raise ConfigError(f"{where}: model_type {hf_config.get('model_type')!r} has no model to check the "
                          "checkpoint against")
    return meta_model(hf_model_config(hf_config, where), where).state_dict()

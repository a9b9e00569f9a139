"""The tensors a config says a checkpoint must hold, taken from the model code itself.

The model is built on the meta device (no memory, no initialisation), so the expected names and
shapes are exactly what loading will ask for; a hand-written list of expected keys could drift
from the model and pass a checkpoint the model cannot load.
"""

from __future__ import annotations

from typing import Any

import torch

from bolmo.config import BolmoConfig
from bolmo.errors import ConfigError


def expected_hf_tensors(hf_config: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """HF name -> meta tensor (shape and dtype, no data) for a Bolmo, Olmo2 or Olmo3 config.json (the
    project's own models, whose state-dict names are the HF ones)."""
    model_type = hf_config.get("model_type")
    if model_type == "bolmo":
        from bolmo.model.bolmo import BolmoForCausalLM

        config = BolmoConfig.from_dict(hf_config, where)
        with torch.device("meta"):
            model = BolmoForCausalLM(config)
    elif model_type in ("olmo2", "olmo3"):
        from bolmo.model.olmo import OlmoForCausalLM
        from bolmo.olmo.config import OlmoConfig

        olmo_config = OlmoConfig.from_dict(hf_config, where)
        with torch.device("meta"):
            model = OlmoForCausalLM(olmo_config)
    else:
        raise ConfigError(f"{where}: model_type {model_type!r} has no model to check the checkpoint against")
    return model.state_dict()

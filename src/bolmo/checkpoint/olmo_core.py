"""Loading hooks for native OLMo-core Bolmo checkpoints (`config.json` + `model_and_optim/`), so
`bolmo.load` accepts them directly: HF names, HF shapes, same checks as `bolmo convert`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bolmo.checkpoint.config_maps import model_family
from bolmo.checkpoint.convert import plan_conversion
from bolmo.checkpoint.model_config import olmo_core_model_config
from bolmo.checkpoint.sources import SourceKind
from bolmo.config import BolmoConfig
from bolmo.errors import CheckpointError


def bolmo_config_from_olmo_core(config: dict[str, Any], where: str = "config.json") -> BolmoConfig:
    """The HF BolmoConfig of an OLMo-core experiment config (its `model` and `dataset.tokenizer`)."""
    if model_family(config, where) != "bolmo":
        raise CheckpointError(f"{where}: model.name is not 'bolmo'; this is not a Bolmo checkpoint")
    return olmo_core_model_config(config, where)


def load_bolmo_olmo_core(path: str | Path) -> tuple[BolmoConfig, dict[str, torch.Tensor]]:
    """Config and full state dict (HF names and shapes) of an OLMo-core Bolmo checkpoint directory.

    The config's `tokenizer_config.original_identifier` is left as the checkpoint has it, so a
    relative tokenizer directory resolves against `path` as it does for HF directories."""
    plan = plan_conversion(path, "hf")
    if plan.source.kind is not SourceKind.OLMO_CORE_BOLMO:
        raise CheckpointError(f"{path}: a {plan.source.kind.value} checkpoint, not an OLMo-core Bolmo one")
    config = BolmoConfig.from_dict(plan.config, str(plan.source.config_path))
    return config, {planned.name: plan.produce(planned) for planned in plan.tensors}

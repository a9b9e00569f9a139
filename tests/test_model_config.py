"""One detection of what a directory holds: `bolmo.load`, `bolmo info` and the converter agree,
and every directory `bolmo.load` accepts gives its config and parameter counts without its weights."""

from __future__ import annotations

import json

import pytest
import torch

import bolmo
from bolmo.checkpoint.expected import meta_model
from bolmo.checkpoint.model_config import model_kind, read_model_config
from bolmo.checkpoint.sources import open_checkpoint
from bolmo.config import BolmoConfig
from bolmo.errors import CheckpointError, ConfigError
from bolmo.loading import DEFAULT_MODEL_DIR
from bolmo.olmo.config import OlmoConfig
from conftest import CKPT_FIXTURES

LOADABLE = [
    (DEFAULT_MODEL_DIR, "bolmo", BolmoConfig),
    (CKPT_FIXTURES / "bolmo_olmo_core", "bolmo-olmo-core", BolmoConfig),
    (CKPT_FIXTURES / "olmo2", "olmo-core", OlmoConfig),
    (CKPT_FIXTURES / "olmo3" / "hf", "olmo3", OlmoConfig),
]


@pytest.mark.parametrize("path, kind, config_class", LOADABLE, ids=lambda v: getattr(v, "name", None))
def test_config_and_parameter_counts_of_every_loadable_directory(path, kind, config_class):
    config, found = read_model_config(path)
    assert found == kind == model_kind(path) and isinstance(config, config_class)
    model = bolmo.load(path)
    assert model.config == config
    counted = sum(p.numel() for p in meta_model(config).parameters())
    assert counted == sum(p.numel() for p in model.parameters()) > 0


def _step_without_subdir(tmp_path, fixture: str):
    """An OLMo-core step directory whose DCP files sit beside config.json (no model_and_optim/)."""
    step = tmp_path / "step"
    step.mkdir()
    (step / "config.json").write_text((CKPT_FIXTURES / fixture / "config.json").read_text())
    for file in (CKPT_FIXTURES / fixture / "model_and_optim").iterdir():
        (step / file.name).symlink_to(file)
    return step


def test_load_detects_what_convert_detects(tmp_path):
    """DCP files beside config.json, or model_and_optim/ named itself: `bolmo convert` read both, and
    `bolmo.load` now reads them too (it used to take them for HF Bolmo directories)."""
    step = _step_without_subdir(tmp_path, "olmo2")
    assert open_checkpoint(step).kind.value == "olmo-core (olmo2/olmo3)"
    assert model_kind(step) == "olmo-core"
    reference = bolmo.load(CKPT_FIXTURES / "olmo2")
    for path in (step, CKPT_FIXTURES / "olmo2" / "model_and_optim"):
        model = bolmo.load(path)
        assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())


def test_directories_without_a_model_config_are_refused_by_name(tmp_path):
    generic = tmp_path / "generic"
    generic.mkdir()
    for file in (CKPT_FIXTURES / "fsdp_sharded" / "checkpoint").iterdir():
        (generic / file.name).symlink_to(file)
    with pytest.raises(CheckpointError, match=r"generic: a dcp \(generic\) checkpoint, with no config.json of a model"):
        model_kind(generic)
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert model_kind(other) == "llama"
    with pytest.raises(ConfigError, match=r"llama/config.json: model_type 'llama' is not a model bolmo implements"):
        read_model_config(other)


@pytest.mark.parametrize("field, value, message", [
    ("num_key_value_heads", 0, "num_key_value_heads: must be a positive integer, got 0"),
    ("hidden_act", "gelu", "hidden_act: only 'silu' is supported"),
    ("rms_norm_eps", 0.0, "rms_norm_eps: must be positive"),
    # Before: named num_key_value_heads ("3 heads are not a multiple of 4 kv heads")
    ("num_attention_heads", 3, "num_attention_heads: hidden_size 64 is not divisible by 3 heads"),
])
def test_bolmo_and_olmo_configs_check_the_transformer_alike(field, value, message):
    """One set of checks for the fields both config classes share (a zero kv-head count used to
    reach a division by zero in the Bolmo config)."""
    bolmo_hf = BolmoConfig.preset("tiny").to_dict() | {field: value}
    olmo_hf = OlmoConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4).to_dict() | {field: value}
    for config_class, hf in ((BolmoConfig, bolmo_hf), (OlmoConfig, olmo_hf)):
        with pytest.raises(ConfigError, match=f"x.json: {message}"):
            config_class.from_dict(hf, "x.json")

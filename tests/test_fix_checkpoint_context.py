"""A native OLMo-core Bolmo checkpoint gets a usable context length (never -1), and a Bolmo
config.json whose max_position_embeddings is below 2 is refused by name."""

from __future__ import annotations

import copy
import json
import warnings

import pytest

import bolmo
from bolmo.checkpoint.config_maps import RELEASED_BOLMO_CONTEXT, olmo_core_to_hf
from bolmo.cli import main
from bolmo.config import BolmoConfig
from bolmo.errors import ConfigError, ContextWarning
from conftest import CKPT_FIXTURES

NATIVE = CKPT_FIXTURES / "bolmo_olmo_core"


def _native_config() -> dict:
    return json.loads((NATIVE / "config.json").read_text())


def _with(config: dict, **sections) -> dict:
    out = copy.deepcopy(config)
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


def test_bolmo_without_any_context_gets_the_released_models_value():
    hf = olmo_core_to_hf(_native_config(), "config.json")
    assert hf["max_position_embeddings"] == RELEASED_BOLMO_CONTEXT == 65536


@pytest.mark.parametrize("sections, expected", [
    ({"dataset": {"sequence_length": 4096}}, 4096),
    ({"train_module": {"max_sequence_length": 8192}}, 8192),
    ({"dataset": {"sequence_length": 1024}, "train_module": {"max_sequence_length": 8192}}, 1024),
    ({"hf_overrides": {"max_position_embeddings": 300}}, 300),
])
def test_context_comes_from_the_training_config_or_overrides(sections, expected):
    config = _with(_native_config(), **sections)
    assert olmo_core_to_hf(config, "config.json")["max_position_embeddings"] == expected


def test_yarn_context_is_old_context_times_factor():
    config = _with(_native_config(), dataset={"sequence_length": 4096})
    config["model"]["block"]["attention"]["rope"]["scaling"] = {
        "factor": 8.0, "old_context_len": 8192, "_CLASS_": "olmo_core.nn.rope.YaRNRoPEScalingConfig"}
    assert olmo_core_to_hf(config, "config.json")["max_position_embeddings"] == 65536


@pytest.mark.parametrize("sections, field", [
    ({"dataset": {"sequence_length": 0}}, r"dataset\.sequence_length: must be an integer >= 2"),
    ({"dataset": {"sequence_length": "long"}}, r"dataset\.sequence_length: expected an integer"),
    ({"hf_overrides": {"max_position_embeddings": -1}}, "max_position_embeddings: must be an integer >= 2"),
])
def test_unusable_context_in_the_olmo_core_config_is_named(sections, field):
    with pytest.raises(ConfigError, match=f"native.json: {field}"):
        olmo_core_to_hf(_with(_native_config(), **sections), "native.json")


@pytest.mark.parametrize("value", [-1, 0, 1, None, 2.5, "4096"])
def test_bolmo_config_refuses_unusable_context(value):
    hf = BolmoConfig.preset("tiny").to_dict() | {"max_position_embeddings": value}
    with pytest.raises(ConfigError, match=f"x.json: max_position_embeddings: must be an integer >= 2, got {value!r}"):
        BolmoConfig.from_dict(hf, "x.json")


def test_native_checkpoint_loads_generates_and_scores(tmp_path, capsys):
    model = bolmo.load(NATIVE)
    assert model.config.max_position_embeddings == 65536
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextWarning)  # the whole prompt used to be dropped
        assert isinstance(model.generate(["The json module"], max_new_bytes=4)[0], str)
    text = tmp_path / "text.txt"
    text.write_text("The json module encodes and decodes JSON.\n" * 20)
    assert main(["score", str(text), "--model", str(NATIVE)]) == 0  # was: max_ids=-2
    assert "context" not in capsys.readouterr().err


def test_convert_never_writes_minus_one(tmp_path):
    assert main(["convert", str(NATIVE), str(tmp_path / "hf"), "--to", "hf"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["max_position_embeddings"] == 65536
    assert bolmo.load(tmp_path / "hf").config.max_position_embeddings == 65536


def test_a_subword_model_of_unknown_context_cuts_nothing():
    """OLMo-core's export writes max_position_embeddings = -1 for subword models: prompts are not
    cut and each scored text is one window (the same scores as with a context that holds it)."""
    model = copy.deepcopy(bolmo.load("default-teacher"))
    text = "import json\n" * 40
    model.config.max_position_embeddings = 4096  # a context that holds the text (the bundled one: 128)
    expected = model.score([text])[0]
    model.config.max_position_embeddings = -1
    assert model.config.context_positions is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextWarning)
        result = model.score([text])[0]
        generated = model.generate([text], max_new_bytes=4)
    assert result.n_bytes == expected.n_bytes and abs(result.nats - expected.nats) < 1e-3
    assert len(generated[0].encode()) >= 1

"""config.json fields are checked for type and range (a ConfigError naming the file and the field,
never a TypeError, AttributeError or IndexError from deep inside torch), and `bolmo.load` takes a
dtype by name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import bolmo
from bolmo.cli import main
from bolmo.config import BolmoConfig, ByteTokenizerConfig
from bolmo.errors import ConfigError
from bolmo.loading import DEFAULT_MODEL_DIR
from bolmo.olmo.config import OlmoConfig
from conftest import CKPT_FIXTURES


@pytest.fixture()
def default_copy(tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, dst)
    return dst


def _edit(path, field: str, value) -> None:
    config = json.loads((path / "config.json").read_text())
    *parents, last = field.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[last] = value
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("field, value, message", [
    ("max_position_embeddings", None, "max_position_embeddings: must be an integer >= 2, got None"),
    ("tokenizer_config", None, "tokenizer_config: expected an object, got None"),
    ("tokenizer_config", [1], "tokenizer_config: expected an object, got [1]"),
    ("tokenizer_config.bos_token_id", 999, "tokenizer_config: bos_token_id: must be a token id in [0, 520), got 999"),
    ("tokenizer_config.eos_token_id", "1", "tokenizer_config: eos_token_id: expected an integer, got '1'"),
    ("tokenizer_config.special_tokens_first", 1, "tokenizer_config: special_tokens_first: expected true or false"),
    ("rope_theta", "abc", "rope_theta: expected a number, got 'abc'"),
    ("rope_theta", 0, "rope_theta: must be positive"),
    ("rms_norm_eps", float("nan"), "rms_norm_eps: expected a number, got nan"),
    ("add_expanded_embeddings", "yes", "add_expanded_embeddings: expected true or false, got 'yes'"),
    ("use_cache", 1, "use_cache: expected true or false, got 1"),
    ("bos_token_id", 600, "bos_token_id: must be a token id in [0, 520), got 600"),
    ("pad_token_id", -1, "pad_token_id: must be a token id in [0, 520), got -1"),
    ("hidden_size", 128.0, "hidden_size: must be a positive integer, got 128.0"),
    ("num_local_decoder_layers", -1, "num_local_decoder_layers: must be an integer >= 0, got -1"),
    ("boundary_predictor_lookahead", True, "boundary_predictor_lookahead: must be an integer >= 0, got True"),
    ("boundary_threshold", 3, "boundary_threshold: expected a string, got 3"),
    ("layer_types", "full_attention", "layer_types: expected a list of strings or null"),
    ("rope_scaling", [], "rope_scaling: expected an object or null, got []"),
    ("rope_scaling", {"rope_type": "yarn", "factor": "8"}, "rope_scaling.factor: expected a number, got '8'"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": -4},
     "rope_scaling.original_max_position_embeddings: must be a positive integer, got -4"),
])
def test_bad_field_is_a_config_error_naming_file_and_field(default_copy, field, value, message):
    _edit(default_copy, field, value)
    with pytest.raises(ConfigError) as error:
        bolmo.load(default_copy)
    assert f"{default_copy / 'config.json'}: {message}" in str(error.value)


def test_cli_reports_a_bad_token_id_in_one_line(default_copy, capsys):
    _edit(default_copy, "tokenizer_config.bos_token_id", 999)
    assert main(["generate", "hi", "--model", str(default_copy), "--max-new-bytes", "2"]) == 2
    err = capsys.readouterr().err
    assert "bos_token_id" in err and "Traceback" not in err


def test_the_bundled_and_preset_configs_still_pass():
    bolmo.load("default")
    for name in ("bolmo-1b", "bolmo-7b", "tiny"):
        BolmoConfig.preset(name)
    assert ByteTokenizerConfig.from_dict({}) == ByteTokenizerConfig()


def test_olmo_configs_get_the_same_type_checks():
    hf = json.loads((CKPT_FIXTURES / "olmo2" / "hf" / "config.json").read_text())
    with pytest.raises(ConfigError, match="x.json: rope_theta: expected a number, got 'abc'"):
        OlmoConfig.from_dict(hf | {"rope_theta": "abc"}, "x.json")
    with pytest.raises(ConfigError, match="x.json: attention_bias: expected true or false, got 'no'"):
        OlmoConfig.from_dict(hf | {"attention_bias": "no"}, "x.json")
    assert OlmoConfig.from_dict(hf, "x.json").max_position_embeddings == -1  # OLMo-core's own export


@pytest.mark.parametrize("name, dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16),
                                         ("float32", torch.float32), ("float64", torch.float64),
                                         (torch.bfloat16, torch.bfloat16)])
def test_load_takes_a_dtype_name(name, dtype):
    model = bolmo.load("default", dtype=name)
    assert {p.dtype for p in model.parameters()} == {dtype}


@pytest.mark.parametrize("dtype", ["bf17", "int8", torch.int64, torch.float8_e5m2, 32])
def test_load_refuses_other_dtypes_by_name(dtype):
    with pytest.raises(ConfigError, match="dtype .* is not supported .*float32, bfloat16, float16, float64"):
        bolmo.load("default", dtype=dtype)

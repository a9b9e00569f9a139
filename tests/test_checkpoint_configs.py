"""OLMo-core experiment config <-> HF config.json, both OLMo-core namings, presets, refusals."""

from __future__ import annotations

import copy
import json
import math

import pytest
from conftest import BOLMO_FIXTURES, CKPT_FIXTURES

from bolmo.checkpoint.config_maps import hf_to_olmo_core, olmo_core_to_hf
from bolmo.checkpoint.model_config import olmo_core_model_config
from bolmo.checkpoint.sources import open_checkpoint
from bolmo.config import BolmoConfig
from bolmo.errors import ConfigError


def _load(path):
    return json.loads(path.read_text())


def _to_2025_naming(config: dict) -> dict:
    """The older field names of bolmo-core / the released checkpoints."""
    config = copy.deepcopy(config)
    block = config["model"]["block"]
    block["attention"] = block.pop("sequence_mixer")
    block["attention"].pop("type")
    block["feed_forward"]["act_name"] = block["feed_forward"].pop("activation")
    return config


@pytest.mark.parametrize("name", ["olmo2", "olmo3"])
def test_both_olmo_core_namings_give_the_fixture_config(name):
    config = _load(CKPT_FIXTURES / name / "config.json")
    reference = _load(CKPT_FIXTURES / name / "hf" / "config.json")
    reference.pop("transformers_version")
    assert olmo_core_to_hf(config, name) == reference
    assert olmo_core_to_hf(_to_2025_naming(config), name) == reference


def test_olmo3_window_is_the_olmo_core_pattern_value():
    hf = olmo_core_to_hf(_load(CKPT_FIXTURES / "olmo3" / "config.json"), "olmo3")
    assert hf["sliding_window"] == 8 and hf["layer_types"] == ["sliding_attention"] * 3 + ["full_attention"]
    native = hf_to_olmo_core(hf, "hf")
    assert native["model"]["block"]["sequence_mixer"]["sliding_window"]["pattern"] == [8, 8, 8, -1]


@pytest.mark.parametrize("preset", ["bolmo-1b", "bolmo-7b", "tiny"])
def test_bolmo_presets_round_trip(preset):
    hf = BolmoConfig.preset(preset).to_dict()
    native = hf_to_olmo_core(hf, preset)
    assert native["model"]["name"] == "bolmo" and native["model"]["vocab_size"] == 640
    assert "attention" in native["model"]["block"]  # bolmo-core (2025) naming
    assert olmo_core_to_hf(native, preset) == hf
    assert olmo_core_model_config(native, "config.json") == BolmoConfig.preset(preset)


def test_bolmo_7b_yarn_is_olmo_core_scaling():
    native = hf_to_olmo_core(BolmoConfig.preset("bolmo-7b").to_dict(), "7b")
    rope = native["model"]["block"]["attention"]["rope"]
    assert rope["scaling"]["old_context_len"] == 8192 and rope["scaling"]["factor"] == 8.0
    assert rope["scaling"]["_CLASS_"] == "olmo_core.nn.rope.YaRNRoPEScalingConfig"
    assert "rope_scaling" not in native.get("hf_overrides", {})


def test_fields_olmo_core_cannot_hold_survive_in_overrides():
    hf = _load(BOLMO_FIXTURES / "tiny-gqa" / "config.json")
    native = hf_to_olmo_core(hf, "tiny-gqa")
    assert native["hf_overrides"] == {"max_position_embeddings": 512, "transformers_version": "4.57.1"}
    assert native["model"]["local_encoder"]["subword_vocab_size"] == 1000
    assert native["dataset"]["tokenizer"]["original_identifier"] == "subword_tokenizer"
    assert olmo_core_to_hf(native, "tiny-gqa") == hf


def test_bolmo_fixture_config():
    config = olmo_core_model_config(_load(CKPT_FIXTURES / "bolmo_olmo_core" / "config.json"), "config.json")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 4)
    assert (config.num_local_encoder_layers, config.num_local_decoder_layers, config.num_local_heads) == (1, 2, 4)
    assert config.local_intermediate_size == 48 and config.intermediate_size == 256
    assert config.rms_norm_eps == 1e-6 and config.local_rms_norm_eps == 1e-5 and config.rope_theta == 500000
    assert config.layer_types == ["full_attention"] * 2 and not config.add_expanded_embeddings


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(name="moe"), "model.name 'moe' is not supported"),
    (lambda m: m["block"].update(name="default"), "model.block.name 'default' is not supported"),
    (lambda m: m["local_decoder"].update(hnet_smooth=True), "'hnet_smooth': True"),
    (lambda m: m["local_encoder"].update(add_hash_embeddings=True), "'add_hash_embeddings': True"),
    (lambda m: m["block"]["attention"]["rope"].update(scaling={"_CLASS_": "olmo_core.nn.rope.ABFRoPEScalingConfig"}),
     "only YaRN"),
])
def test_unsupported_olmo_core_configs_are_named(edit, message):
    config = _load(CKPT_FIXTURES / "bolmo_olmo_core" / "config.json")
    edit(config["model"])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        olmo_core_to_hf(config, "config.json")


def test_hf_fields_without_olmo_core_meaning_are_refused():
    hf = _load(CKPT_FIXTURES / "olmo2" / "hf" / "config.json") | {"partial_rotary_factor": 0.5}
    with pytest.raises(ConfigError, match=r"\['partial_rotary_factor'\] cannot be expressed"):
        hf_to_olmo_core(hf, "config.json")
    bolmo = BolmoConfig.preset("tiny").to_dict() | {"local_rms_norm_eps": 1e-6}
    with pytest.raises(ConfigError, match="local_rms_norm_eps"):
        hf_to_olmo_core(bolmo, "config.json")


def test_config_that_is_neither_format(tmp_path):
    (tmp_path / "config.json").write_text('{"trainer": {}}')
    with pytest.raises(ConfigError, match="neither an OLMo-core experiment config .* nor an HF config"):
        open_checkpoint(tmp_path)


def _transformers_5(hf: dict) -> dict:
    """The same config as transformers 5 / OLMo-core 3.0 write it: `rope_parameters`, per layer type for Olmo 3."""
    hf = copy.deepcopy(hf)
    rope = {"rope_theta": hf.pop("rope_theta"), **(hf.pop("rope_scaling") or {"rope_type": "default"})}
    if hf["model_type"] == "olmo3":
        rope = {"full_attention": rope, "sliding_attention": {"rope_theta": rope["rope_theta"], "rope_type": "default"}}
    return hf | {"rope_parameters": rope}


@pytest.mark.parametrize("name", ["olmo2", "olmo3"])
def test_transformers_5_rope_parameters_convert_to_olmo_core(name):
    hf = _load(CKPT_FIXTURES / name / "hf" / "config.json")
    assert hf_to_olmo_core(_transformers_5(hf), "config.json") == hf_to_olmo_core(hf, "config.json")
    yarn = hf | {"rope_scaling": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192,
                                  "beta_fast": 32, "beta_slow": 1, "attention_factor": 0.1 * math.log(8.0) + 1}}
    assert hf_to_olmo_core(_transformers_5(yarn), "config.json") == hf_to_olmo_core(yarn, "config.json")


@pytest.mark.parametrize("name", ["olmo2", "olmo3"])
def test_default_rope_scaling_is_plain_rope(name):
    hf = _load(CKPT_FIXTURES / name / "hf" / "config.json")
    native = hf_to_olmo_core(hf | {"rope_scaling": {"rope_type": "default"}}, "config.json")
    assert native == hf_to_olmo_core(hf, "config.json")
    bolmo = BolmoConfig.preset("tiny").to_dict() | {"rope_scaling": {"rope_type": "default"}}
    assert "scaling" not in hf_to_olmo_core(bolmo, "config.json")["model"]["block"]["attention"]["rope"]


def _dcp_with_config(root, config_text: str):
    root.mkdir()
    (root / "model_and_optim").symlink_to(CKPT_FIXTURES / "olmo2" / "model_and_optim")
    (root / "config.json").write_text(config_text)
    return root


@pytest.mark.parametrize("config_text, why", [
    ('{"model": {"name": "moe", "d_model": 12}}', "model.name 'moe' is not supported"),
    ('{"run_name": "step5"}', "not an OLMo-core experiment config"),
    ('{"model_type": "qwen2"}', "an HF config (model_type 'qwen2')"),
    ('{"model": "gpt2"}', "model: expected an object, got 'gpt2'"),
    ("not json", "not valid JSON"),
], ids=["moe", "run-config", "hf-qwen2", "model-string", "not-json"])
def test_unrelated_config_beside_a_dcp_is_noted_not_fatal(config_text, why, tmp_path, capsys):
    from bolmo.checkpoint.convert import convert
    from bolmo.checkpoint.sources import SourceKind
    from bolmo.cli import main

    src = _dcp_with_config(tmp_path / "ckpt", config_text)
    source = open_checkpoint(src)
    assert source.kind is SourceKind.DCP and why in source.notes[0] and "generic DCP checkpoint" in source.notes[0]
    assert main(["inspect", str(src)]) == 0 and why in capsys.readouterr().out
    assert main(["verify", str(src)]) == 0
    result = convert(src, tmp_path / "out", "hf")
    assert len(result.plan.tensors) == 36 and not (result.destination / "config.json").exists()


def test_malformed_config_fields_are_named():
    config = _load(CKPT_FIXTURES / "bolmo_olmo_core" / "config.json")
    del config["model"]["local_decoder"]["block_config"]["feed_forward"]
    with pytest.raises(ConfigError, match=r"config.json: missing field model\.local_decoder\.block_config\.feed_forward"):
        olmo_core_to_hf(config, "config.json")
    config["dataset"] = "bytes"
    with pytest.raises(ConfigError, match=r"config.json: dataset: expected an object, got 'bytes'"):
        olmo_core_to_hf(config, "config.json")


@pytest.mark.parametrize("extra, expressible", [
    ({}, True),  # betas and attention factor left to their defaults
    ({"attention_factor": 0.1 * math.log(4.0) + 1.0}, True),  # the default, spelled out
    ({"attention_factor": 1.5}, False),
    ({"mscale": 1.0, "mscale_all_dim": 1.0}, False),  # resolves to attention factor 1.0
])
def test_yarn_spelled_out_or_defaulted_is_the_same_rope(extra, expressible):
    import transformers
    from olmo_helpers import OLMO3, olmo3_rope_parameters

    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, **extra}
    kwargs = {**OLMO3, "rope_scaling": scaling}
    if not transformers.__version__.startswith("4."):
        kwargs = olmo3_rope_parameters(kwargs)
    hf = transformers.Olmo3Config(**kwargs).to_diff_dict()
    if expressible:
        assert olmo_core_to_hf(hf_to_olmo_core(hf, "config.json"), "config.json")["rope_scaling"]["factor"] == 4.0
    else:
        with pytest.raises(ConfigError, match="rope_scaling"):
            hf_to_olmo_core(hf, "config.json")

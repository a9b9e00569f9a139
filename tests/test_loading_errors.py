"""Bad checkpoints and configs give one clear bolmo error naming the file/tensor/field, and the
CLI turns it into a one-line message with exit code 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import bolmo
from bolmo.cli import main
from bolmo.errors import CheckpointError, ConfigError, TokenizerError


@pytest.fixture()
def model_copy(tmp_path, tiny_model_dir):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst, ignore=shutil.ignore_patterns("cases.*"))
    return dst


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_missing_weights_file(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        bolmo.load(model_copy)


def test_truncated_safetensors(model_copy):
    file = model_copy / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        bolmo.load(model_copy)


def test_missing_tensor(model_copy):
    state = load_file(model_copy / "model.safetensors")
    del state["model.local_decoder.in_projection.bias"]
    save_file(state, model_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.local_decoder.in_projection.bias"):
        bolmo.load(model_copy)


def test_misshapen_tensor(model_copy):
    state = load_file(model_copy / "model.safetensors")
    state["model.norm.weight"] = torch.ones(7)
    save_file(state, model_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*\[7\].*\[64\]"):
        bolmo.load(model_copy)


def test_extra_tensor(model_copy):
    state = load_file(model_copy / "model.safetensors")
    state["model.surprise.weight"] = torch.ones(3)
    save_file(state, model_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.surprise.weight"):
        bolmo.load(model_copy)


def test_sharded_index_loads_and_missing_shard_is_named(model_copy, tiny_model_dir):
    state = load_file(model_copy / "model.safetensors")
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, model_copy / file)
        weight_map.update({k: file for k in keys})
    (model_copy / "model.safetensors").unlink()
    (model_copy / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    sharded = bolmo.load(model_copy)
    reference = bolmo.load(tiny_model_dir)
    ids = torch.tensor([reference.tokenizer.encode("sharded")])
    with torch.no_grad():
        assert torch.equal(sharded(ids).logits, reference(ids).logits)
    (model_copy / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        bolmo.load(model_copy)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"hidden_sise": 64}, "hidden_sise"),  # unknown field
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"boundary_threshold": "entropy:3"}, "boundary_threshold"),
        ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "rope_type"),
        ({"layer_types": ["full_attention"]}, "layer_types"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"vocab_size": 256}, "vocab_size"),
    ],
)
def test_bad_config_fields_are_named(model_copy, changes, field):
    edit_config(model_copy, **changes)
    with pytest.raises(ConfigError, match=field) as error:
        bolmo.load(model_copy)
    assert str(model_copy / "config.json") in str(error.value)  # the file at fault, not just "config.json"


def test_unavailable_subword_tokenizer_points_to_download(model_copy, monkeypatch, tmp_path):
    from huggingface_hub import constants

    # huggingface_hub reads these variables once, at import (an earlier test may have imported it):
    # patch what it read, or the real cache is searched.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    tokenizer_config = json.loads((model_copy / "config.json").read_text())["tokenizer_config"]
    tokenizer_config["original_identifier"] = "allenai/dolma2-tokenizer"
    edit_config(model_copy, tokenizer_config=tokenizer_config)
    with pytest.raises(TokenizerError, match="bolmo download"):
        bolmo.load(model_copy)


def test_cli_turns_errors_into_one_line_and_exit_2(model_copy, capsys):
    edit_config(model_copy, hidden_act="relu")
    assert main(["info", str(model_copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hidden_act" in err and "Traceback" not in err
    assert main(["score", str(model_copy / "nope.txt"), "--model", str(model_copy)]) == 2
    assert "nope.txt" in capsys.readouterr().err


def test_nonexistent_source(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        bolmo.load(tmp_path / "absent")


def test_an_olmo_core_steps_dcp_directory_loads_as_its_step(tmp_path):
    """`step/model_and_optim` (what `bolmo convert` also accepts): the step's config and its
    relative subword tokenizer are found, as for the step directory itself."""
    from bolmo.checkpoint.convert import convert

    convert("default", tmp_path / "step", "olmo-core")
    step, inner = bolmo.load(tmp_path / "step"), bolmo.load(tmp_path / "step" / "model_and_optim")
    assert inner.generate(["Hello"], max_new_bytes=8) == step.generate(["Hello"], max_new_bytes=8)

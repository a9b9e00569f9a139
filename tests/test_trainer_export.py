"""The trainer's HF export goes through the checkpoint writer: sharded, checked after writing, atomic."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import bolmo
import bolmo.train.checkpointing as checkpointing
from bolmo.errors import CheckpointError
from bolmo.model.olmo import OlmoForCausalLM
from bolmo.olmo.config import OlmoConfig
from bolmo.train.checkpointing import ModelDescription, export_hf
from bolmo.train.distributed import Dist

SINGLE = Dist(rank=0, world_size=1, device=torch.device("cpu"))


class _Root(nn.Module):
    """What the trainer exports: a module whose `model` is the trained model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def _trained(tmp_path):
    config = OlmoConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = OlmoForCausalLM(config)
    for p in model.parameters():
        nn.init.normal_(p)
    (tmp_path / "tok").mkdir()
    return _Root(model), ModelDescription.of(model, tmp_path / "tok")


def test_export_is_sharded_and_loads(tmp_path):
    root, desc = _trained(tmp_path)
    out = export_hf(root, desc, tmp_path / "hf", SINGLE, shard_size=4096)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / f).stat().st_size <= 4096 + 1024 for f in shards)
    loaded = bolmo.load(out)
    assert loaded.state_dict().keys() == root.model.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in root.model.state_dict().items())


def test_export_that_fails_its_check_leaves_nothing(tmp_path, monkeypatch):
    root, desc = _trained(tmp_path)

    def refuse(out, planned):
        assert len(planned) == len(root.model.state_dict()) and (out / "model.safetensors").is_file()
        raise CheckpointError(f"{out}: written checkpoint differs from the plan")

    monkeypatch.setattr(checkpointing, "check_written", refuse)
    with pytest.raises(CheckpointError, match="differs from the plan"):
        export_hf(root, desc, tmp_path / "hf", SINGLE)
    assert not (tmp_path / "hf").exists()


def test_export_context_is_at_least_the_trained_length(tmp_path):
    """A model byteified from a short-context teacher but trained on longer windows is exported
    with the trained length as its context (its prompt cuts and scoring windows follow it)."""
    root, _ = _trained(tmp_path)
    short = root.model.config.max_position_embeddings
    for trained, expected in ((short + 448, short + 448), (short - 1, short)):
        desc = ModelDescription.of(root.model, tmp_path / "tok", trained)
        out = export_hf(root, desc, tmp_path / f"hf{trained}", SINGLE)
        assert bolmo.load(out).config.max_position_embeddings == expected

"""Consolidate a real FSDP2 checkpoint (2 gloo processes, with an EMA copy) into HF safetensors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bolmo.checkpoint.dcp_reader import DCPCheckpoint
from bolmo.checkpoint.safetensors_io import HFWeights
from bolmo.cli import main


@pytest.fixture(scope="module")
def fsdp_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    script = Path(__file__).with_name("fsdp_checkpoint_writer.py")
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=300, capture_output=True)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("flag", [[], ["--ema"]], ids=["model", "ema"])
def test_fsdp2_checkpoint_consolidates(fsdp_checkpoint, flag, tmp_path):
    ckpt = DCPCheckpoint(fsdp_checkpoint / "checkpoint")
    assert [c.sizes for c in ckpt.inventory()["model.gate"].chunks] == [(1, 16), (0, 16)]  # an empty shard
    assert [c.sizes for c in ckpt.inventory()["model.embed.weight"].chunks] == [(19, 16), (18, 16)]
    out = tmp_path / "hf"
    assert main(["convert", str(fsdp_checkpoint / "checkpoint"), str(out), "--to", "hf", *flag]) == 0
    expected = torch.load(fsdp_checkpoint / "expected.pt", weights_only=True)["ema" if flag else "model"]
    weights = HFWeights(out)
    assert sorted(weights.inventory()) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(weights.read_tensor(name), tensor), name

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
def test_fsdp2_checkpoint_consolidates(fsdp_checkpoint, flag, tmp_path, capsys):
    ckpt = DCPCheckpoint(fsdp_checkpoint / "checkpoint")
    assert [c.sizes for c in ckpt.inventory()["model.gate"].chunks] == [(1, 16), (0, 16)]  # an empty shard
    assert [c.sizes for c in ckpt.inventory()["model.embed.weight"].chunks] == [(19, 16), (18, 16)]
    assert "model.pos" in ckpt.inventory() and "ema.pos" not in ckpt.inventory()  # the EMA tracks no buffers
    out = tmp_path / "hf"
    assert main(["convert", str(fsdp_checkpoint / "checkpoint"), str(out), "--to", "hf", *flag]) == 0
    report = capsys.readouterr().out
    # The buffer the EMA does not track is the model's, and the report says so.
    line = "from 'model': 1 tensor(s) 'ema' does not track (no optimizer state: buffers, frozen parameters): pos\n"
    assert (line in report) == bool(flag)
    expected = torch.load(fsdp_checkpoint / "expected.pt", weights_only=True)["ema" if flag else "model"]
    weights = HFWeights(out)
    assert sorted(weights.inventory()) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(weights.read_tensor(name), tensor), name

"""`bolmo convert / inspect / verify` through the CLI entry point: exit codes and output."""

from __future__ import annotations

import json

import pytest
from conftest import BOLMO_FIXTURES, CKPT_FIXTURES

from bolmo.cli import main


def test_convert_prints_a_summary(capsys, tmp_path):
    code = main(["convert", str(CKPT_FIXTURES / "fsdp_sharded" / "checkpoint"), str(tmp_path / "ema"), "--to", "hf",
                 "--ema", "--dtype", "bfloat16"])
    out = capsys.readouterr().out
    assert code == 0
    assert "(dcp (generic)) -> " in out and "tensors:  23 from 'ema'" in out
    assert "config.json: no (source has no model config)" in out


def test_convert_olmo_core_bolmo_with_verify_against(capsys, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["convert", str(CKPT_FIXTURES / "bolmo_olmo_core"), str(first), "--to", "hf"]) == 0
    assert main(["convert", str(first), str(tmp_path / "native"), "--to", "olmo-core"]) == 0
    assert main(["convert", str(tmp_path / "native"), str(second), "--to", "hf", "--verify-against", str(first)]) == 0
    assert "verified against" in capsys.readouterr().out


def test_inspect_json_totals(capsys):
    assert main(["inspect", str(CKPT_FIXTURES / "fsdp_sharded" / "checkpoint"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "dcp (generic)"
    by_prefix = report["totals"]["prefix"]
    assert {k: v["count"] for k, v in by_prefix.items()} == {"ema": 23, "model": 23, "optim": 69}
    assert by_prefix["model"]["parameters"] == 105_840 and by_prefix["model"]["bytes"] == 4 * 105_840
    assert report["totals"]["module"]["model.blocks"]["count"] == 21
    embed = next(t for t in report["tensors"] if t["name"] == "model.embed.weight")
    assert embed == {"name": "model.embed.weight", "shape": [300, 48], "dtype": "float32",
                     "files": ["__0_0.distcp", "__1_0.distcp"]}
    assert next(t for t in report["tensors"] if t["name"] == "step")["dtype"] == "object"


@pytest.mark.parametrize("path", [BOLMO_FIXTURES / "tiny-gqa", BOLMO_FIXTURES / "tiny-gqa" / "model.safetensors",
                                  CKPT_FIXTURES / "olmo3"], ids=["hf-dir", "safetensors-file", "olmo-core"])
def test_inspect_tables(path, capsys):
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "totals per prefix" in out and "totals per module" in out


@pytest.mark.parametrize("path", [CKPT_FIXTURES / "olmo2", CKPT_FIXTURES / "olmo3" / "hf", CKPT_FIXTURES / "bolmo_olmo_core",
                                  BOLMO_FIXTURES / "tiny-gqa", CKPT_FIXTURES / "fsdp_sharded" / "checkpoint"])
def test_verify_accepts_the_fixtures(path, capsys):
    assert main(["verify", str(path)]) == 0
    assert "ok: files, byte ranges and tensor inventory are consistent" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["convert", "inspect", "verify"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and command in capsys.readouterr().out


def test_convert_flags_for_dcp_without_prefix_and_for_hf_sources(capsys, tmp_path):
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(2, 3), "b": torch.zeros(3)}, checkpoint_id=tmp_path / "noprefix", no_dist=True)
    assert main(["convert", str(tmp_path / "noprefix"), str(tmp_path / "all"), "--to", "hf", "--prefix", ""]) == 0
    assert "tensors:  2 (every DCP tensor)" in capsys.readouterr().out
    assert main(["convert", str(CKPT_FIXTURES / "olmo2" / "hf"), str(tmp_path / "hf"), "--to", "hf", "--ema"]) == 2
    assert "--prefix/--ema pick a top-level key of a DCP checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal width
    assert "--allow-missing" in help_text and "'' takes every tensor" in help_text

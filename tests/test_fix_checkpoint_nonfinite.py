"""NaN / inf weights: `bolmo convert` refuses them naming the tensor (and leaves nothing behind),
`bolmo verify` reports them one tensor at a time; a generic DCP checkpoint's tensors are copied."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch

from bolmo.checkpoint.dcp_reader import DCPCheckpoint
from bolmo.checkpoint.dcp_writer import DCPWriter
from bolmo.checkpoint.layout import DCP_SUBDIR
from bolmo.checkpoint.verify import verify_directory
from bolmo.cli import main
from bolmo.loading import DEFAULT_MODEL_DIR

NAN_MESSAGE = "tensor 'lm_head.weight' holds NaN or infinite values"


def _damage_lm_head(model_dir) -> None:
    """400 bytes of 0xFF (NaNs) in the middle of lm_head.weight, as a damaged download would have."""
    file = model_dir / "model.safetensors"
    data = bytearray(file.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    start, end = json.loads(data[8:8 + header])["lm_head.weight"]["data_offsets"]
    middle = 8 + header + (start + end) // 2
    data[middle:middle + 400] = b"\xff" * 400
    file.write_bytes(bytes(data))


@pytest.fixture()
def damaged(tmp_path):
    dst = tmp_path / "damaged"
    shutil.copytree(DEFAULT_MODEL_DIR, dst)
    _damage_lm_head(dst)
    return dst


def test_verify_reports_the_non_finite_tensor(damaged, capsys):
    assert main(["verify", str(damaged)]) == 1
    assert NAN_MESSAGE in capsys.readouterr().out


@pytest.mark.parametrize("to, name", [("hf", "'lm_head.weight'"),
                                      ("olmo-core", "'model.lm_head.w_out.weight' (stored as lm_head.weight)")])
def test_convert_refuses_and_writes_nothing(damaged, tmp_path, capsys, to, name):
    out = tmp_path / "out"
    assert main(["convert", str(damaged), str(out), "--to", to]) == 2
    assert f"{damaged}: tensor {name} holds NaN or infinite values" in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["damaged"]


def test_native_checkpoint_with_inf_is_refused_by_convert_verify(tmp_path, capsys):
    native = tmp_path / "native"
    assert main(["convert", str(DEFAULT_MODEL_DIR), str(native), "--to", "olmo-core"]) == 0
    clean = DCPCheckpoint(native / DCP_SUBDIR)
    tensors = {name: clean.read_tensor(name) for name, info in clean.inventory().items() if info.is_tensor}
    tensors["model.lm_head.w_out.weight"][3, 5] = float("inf")
    shutil.rmtree(native / DCP_SUBDIR)
    with DCPWriter(native / DCP_SUBDIR) as writer:
        for name, tensor in tensors.items():
            writer.add(name, tensor)
    report = verify_directory(native)
    assert report.problems == [f"{native}: tensor 'lm_head.weight' (stored as model.lm_head.w_out.weight) "
                               "holds NaN or infinite values"]
    assert main(["convert", str(native), str(tmp_path / "hf"), "--to", "hf"]) == 2
    assert "lm_head.weight" in capsys.readouterr().err and not (tmp_path / "hf").exists()


def test_generic_dcp_tensors_are_copied_as_they_are(tmp_path):
    """No model config: a -inf mask buffer is legitimate there, so nothing is refused."""
    with DCPWriter(tmp_path / "dcp") as writer:
        writer.add("model.mask", torch.full((2, 2), float("-inf")))
        writer.add("model.weight", torch.ones(2, 2))
    assert verify_directory(tmp_path / "dcp").ok
    assert main(["convert", str(tmp_path / "dcp"), str(tmp_path / "hf"), "--to", "hf"]) == 0


def test_clean_checkpoints_still_verify():
    assert verify_directory(DEFAULT_MODEL_DIR).ok

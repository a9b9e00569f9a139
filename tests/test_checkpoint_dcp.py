"""The allow-list DCP reader on checkpoints written by OLMo-core, bolmo-core and FSDP2, and the DCP
writer read back by torch's own loader."""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings

import pytest
import torch
from conftest import CKPT_FIXTURES
from safetensors.torch import load_file

from bolmo.checkpoint.dcp_reader import DCPCheckpoint
from bolmo.checkpoint.dcp_writer import DCPWriter
from bolmo.checkpoint.inventory import Chunk, TensorInfo
from bolmo.errors import CheckpointError

READABLE = {
    "olmo2": (CKPT_FIXTURES / "olmo2" / "model_and_optim", "model", CKPT_FIXTURES / "olmo2" / "expected_model_state.safetensors"),
    "olmo3": (CKPT_FIXTURES / "olmo3" / "model_and_optim", "model", CKPT_FIXTURES / "olmo3" / "expected_model_state.safetensors"),
    "bolmo": (CKPT_FIXTURES / "bolmo_olmo_core" / "model_and_optim", "model",
              CKPT_FIXTURES / "bolmo_olmo_core" / "expected_model_state.safetensors"),
    "fsdp-model": (CKPT_FIXTURES / "fsdp_sharded" / "checkpoint", "model", CKPT_FIXTURES / "fsdp_sharded" / "expected_model.safetensors"),
    "fsdp-ema": (CKPT_FIXTURES / "fsdp_sharded" / "checkpoint", "ema", CKPT_FIXTURES / "fsdp_sharded" / "expected_ema.safetensors"),
}


@pytest.mark.parametrize("case", READABLE)
def test_every_fixture_reads_exactly(case):
    path, prefix, expected_file = READABLE[case]
    ckpt = DCPCheckpoint(path)
    assert ckpt.problems(check_items=True) == []
    expected = load_file(expected_file)
    got = {name.removeprefix(prefix + "."): tensor for name, tensor in ckpt.iter_tensors(prefix)}
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_inventory_of_sharded_fixture():
    ckpt = DCPCheckpoint(CKPT_FIXTURES / "fsdp_sharded" / "checkpoint")
    inventory = ckpt.inventory()
    embed = inventory["model.embed.weight"]
    assert embed.shape == (300, 48) and embed.dtype == torch.float32
    assert [(c.offsets, c.sizes) for c in embed.chunks] == [((0, 0), (150, 48)), ((150, 0), (150, 48))]
    assert embed.files == ("__0_0.distcp", "__1_0.distcp")
    assert ckpt.prefixes() == {"model": 23, "ema": 23, "optim": 69}
    assert not inventory["step"].is_tensor
    assert ckpt.read_object("step") == 3
    assert ckpt.read_object("optim.param_groups.0.params")[:2] == ["embed.weight", "blocks.0.norm.weight"]
    with pytest.raises(CheckpointError, match="is a pickled object"):
        ckpt.read_tensor("step")


def test_olmo_core_metadata_class_is_mapped_without_olmo_core():
    raw = (CKPT_FIXTURES / "olmo2" / "model_and_optim" / ".metadata").read_bytes()
    assert b"olmo_core.distributed.checkpoint.filesystem" in raw
    with pytest.raises(ModuleNotFoundError):  # what torch's own reader runs into
        pickle.loads(raw)
    assert "model.embeddings.weight" in DCPCheckpoint(CKPT_FIXTURES / "olmo2" / "model_and_optim").inventory()


def test_unknown_global_in_metadata_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match=r"refers to class posix\.system.*refusing"):
        DCPCheckpoint(tmp_path)


def _info(shape, chunks):
    return TensorInfo("t", shape, torch.float32, ("f",), tuple(Chunk(o, s, "f", 0, 1) for o, s in chunks))


@pytest.mark.parametrize("chunks, message", [
    ([((0, 0), (2, 4)), ((2, 0), (2, 4))], None),  # row shards
    ([((0, 0), (4, 2)), ((0, 2), (4, 2))], None),  # column shards
    ([((0, 0), (4, 4)), ((4, 0), (0, 4))], None),  # an empty chunk, as FSDP2 writes for small tensors
    ([((0, 0), (2, 4))], "chunks cover 8 of 16 elements"),
    ([((0, 0), (3, 4)), ((2, 0), (2, 4))], "chunks cover 20 of 16 elements"),
    ([((0, 0), (3, 4)), ((2, 0), (1, 4))], "chunks overlap"),
    ([((0, 0), (4, 2)), ((0, 1), (4, 2))], "chunks overlap"),
    ([((0, 0), (4, 4)), ((3, 0), (2, 4))], "chunk at [3, 0] size [2, 4] lies outside shape [4, 4]"),
])
def test_chunks_must_tile_the_tensor(chunks, message):
    from bolmo.checkpoint.dcp_reader import _coverage_problem

    info = TensorInfo("t", (4, 4), torch.float32, ("f",), tuple(Chunk(o, s, "f", 0, 1) for o, s in chunks))
    assert _coverage_problem(info) == message


def test_writer_output_loads_with_torch_dcp(tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    state = {
        "model.w": torch.randn(5, 3),
        "model.ids": torch.arange(4),
        "model.view": torch.randn(10, 4)[2:5],  # a view: must be stored without its base
        "model.scalar": torch.tensor(3.0),
        "model.half": torch.randn(3, 2).bfloat16(),
    }
    with DCPWriter(tmp_path) as writer:
        for key, tensor in state.items():
            writer.add(key, tensor)
    loaded = {key: torch.empty_like(tensor.contiguous()) for key, tensor in state.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process"
        dcp.load(loaded, storage_reader=FileSystemReader(tmp_path), no_dist=True)
    ours = DCPCheckpoint(tmp_path)
    assert ours.problems(check_items=True) == []
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor) and torch.equal(ours.read_tensor(key), tensor)
    assert (tmp_path / "__0_0.distcp").stat().st_size < 8 * 1024  # the view's 40-element base is not stored


def test_corrupt_item_is_named(tmp_path):
    with DCPWriter(tmp_path) as writer:
        writer.add("model.w", torch.randn(64, 64))
    data = bytearray((tmp_path / "__0_0.distcp").read_bytes())
    data[:4] = b"XXXX"
    (tmp_path / "__0_0.distcp").write_bytes(bytes(data))
    ckpt = DCPCheckpoint(tmp_path)
    assert "not a torch.save archive" in ckpt.problems(check_items=True)[0]
    with pytest.raises(CheckpointError, match=r"model.w@\[0, 0\].*corrupt item"):
        ckpt.read_tensor("model.w")


def test_byte_range_view_reads_only_its_range():
    from bolmo.checkpoint.dcp_reader import _ByteRange

    raw = io.BytesIO(b"0123456789")
    view = _ByteRange(raw, 2, 5)  # type: ignore[arg-type]
    buf = bytearray(10)
    assert view.readinto(buf) == 5 and bytes(buf[:5]) == b"23456"
    assert view.seek(-2, io.SEEK_END) == 3 and view.readinto(buf) == 2 and bytes(buf[:2]) == b"56"


def test_missing_metadata_points_at_model_and_optim():
    with pytest.raises(CheckpointError, match="model_and_optim"):
        DCPCheckpoint(CKPT_FIXTURES / "olmo2")


def _edit_storage(directory, edit) -> None:
    """Rewrite a torch-written `.metadata` with `edit(index, storage_info)` applied to every item."""
    md = pickle.loads((directory / ".metadata").read_bytes())
    for index, info in md.storage_data.items():
        edit(index, info)
    (directory / ".metadata").write_bytes(pickle.dumps(md))


def _dcp_save(directory, state, **kwargs) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process"
        dcp.save(state, checkpoint_id=directory, no_dist=True, **kwargs)


def test_flipped_tensor_bytes_fail_the_crc_check(tmp_path):
    """torch's loader ignores the zip CRC-32s: 16 flipped bytes of tensor data load silently."""
    with DCPWriter(tmp_path) as writer:
        writer.add("model.w", torch.randn(64, 64))
    item = DCPCheckpoint(tmp_path).inventory()["model.w"].chunks[0]
    data = bytearray((tmp_path / "__0_0.distcp").read_bytes())
    middle = item.offset + item.length // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    (tmp_path / "__0_0.distcp").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"__0_0.distcp: item model.w@\[0, 0\] \[0, \+\d+\): corrupt item: "
                                              r"the tensor data \(archive/data/0\) has CRC-32"):
        DCPCheckpoint(tmp_path).read_tensor("model.w")
    assert "CRC-32" in DCPCheckpoint(tmp_path).problems(check_items=True)[0]


def test_damaged_small_record_fails_the_crc_check(tmp_path):
    with DCPWriter(tmp_path) as writer:
        writer.add("model.w", torch.randn(4, 4))
    data = bytearray((tmp_path / "__0_0.distcp").read_bytes())
    at = data.index(b"byteorder") + len(b"byteorder")  # the record's data follows its local header
    at = data.index(b"little", at)
    data[at:at + 6] = b"LITTLE"
    (tmp_path / "__0_0.distcp").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.w@\[0, 0\].*corrupt item.*Bad CRC-32 for file 'archive/byteorder'"):
        DCPCheckpoint(tmp_path).read_tensor("model.w")


@pytest.mark.parametrize("change, message", [
    (-100, r"item model.a@\[0\] \[\d+, \+\d+\): corrupt item \(File is not a zip file; damaged bytes, or a byte range"),
    (+10, r"item model.a@\[0\] \[\d+, \+\d+\) and item model.b@\[0\] \[\d+, \+\d+\) overlap"),
])
def test_wrong_item_length_is_found_by_verify(change, message, tmp_path):
    with DCPWriter(tmp_path) as writer:
        writer.add("model.a", torch.randn(100))
        writer.add("model.b", torch.randn(100))
    _edit_storage(tmp_path, lambda index, info: setattr(info, "length", info.length + change)
                  if index.fqn == "model.a" else None)
    ckpt = DCPCheckpoint(tmp_path)
    assert ckpt.problems() == []  # the files are long enough: only reading the items can tell
    problems = ckpt.problems(check_items=True)
    assert len(problems) == 1 and re.search(message, problems[0])


@pytest.mark.parametrize("relative_path", ["../outside.distcp", "/etc/passwd", "sub/../../outside.distcp"])
def test_data_files_must_lie_inside_the_checkpoint(relative_path, tmp_path):
    ckpt = tmp_path / "ckpt"
    with DCPWriter(ckpt) as writer:
        writer.add("model.w", torch.randn(3))
    (ckpt / "__0_0.distcp").rename(tmp_path / "outside.distcp")
    _edit_storage(ckpt, lambda index, info: setattr(info, "relative_path", relative_path))
    with pytest.raises(CheckpointError, match=rf"\.metadata: entry 'model.w' names data file '{re.escape(relative_path)}', "
                                              "which is not inside the checkpoint directory"):
        DCPCheckpoint(ckpt)


def test_rank_local_metadata_is_merged(tmp_path):
    """`use_collectives=False`: every rank writes its own `__R.metadata` and no `.metadata`."""
    from torch.distributed.checkpoint import FileSystemWriter

    class Rank1Writer(FileSystemWriter):
        def set_up_storage_writer(self, is_coordinator, *args, **kwargs):
            super().set_up_storage_writer(is_coordinator, *args, **{**kwargs, "rank": 1})

    a, b, shared = torch.randn(2, 3), torch.arange(4), torch.randn(5)
    _dcp_save(tmp_path, {"model": {"a": a, "shared": shared}, "step": 7}, use_collectives=False)
    _dcp_save(None, {"model": {"b": b, "shared": shared}, "step": 7}, use_collectives=False,
              storage_writer=Rank1Writer(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["__0.metadata", "__0_0.distcp", "__1.metadata", "__1_0.distcp"]
    ckpt = DCPCheckpoint(tmp_path)
    assert ckpt.problems(check_items=True) == []
    assert sorted(ckpt.inventory()) == ["model.a", "model.b", "model.shared", "step"]
    assert ckpt.inventory()["model.shared"].files == ("__0_0.distcp",)  # saved by both ranks, read once
    for name, tensor in {"model.a": a, "model.b": b, "model.shared": shared}.items():
        assert torch.equal(ckpt.read_tensor(name), tensor)
    assert ckpt.read_object("step") == 7


def test_zstd_compressed_items_are_read(tmp_path):
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint._extension import ZStandard

    state = {"model": {"w": torch.randn(8, 8), "ids": torch.arange(6)}, "step": 3}
    _dcp_save(None, state, storage_writer=FileSystemWriter(tmp_path, _extensions=[ZStandard()]))
    ckpt = DCPCheckpoint(tmp_path)
    assert ckpt.inventory()["model.w"].chunks[0].transforms == ("stream.zstd/1",)
    assert ckpt.problems(check_items=True) == []
    assert torch.equal(ckpt.read_tensor("model.w"), state["model"]["w"]) and ckpt.read_object("step") == 3
    _edit_storage(tmp_path, lambda index, info: setattr(info, "transform_descriptors", ["stream.lz4/1"]))
    assert DCPCheckpoint(tmp_path).problems() == [
        f"{tmp_path}: items were saved with DCP extension(s) stream.lz4/1, which bolmo does not read (it reads stream.zstd/1)"]
    with pytest.raises(CheckpointError, match=r"model.w@\[0, 0\].*saved with DCP extension 'stream.lz4/1'"):
        DCPCheckpoint(tmp_path).read_tensor("model.w")


def test_safetensors_serialization_format_is_named(tmp_path):
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import SerializationFormat

    writer = FileSystemWriter(tmp_path, serialization_format=SerializationFormat.SAFETENSORS)
    _dcp_save(None, {"model": {"a": torch.randn(3), "b": torch.randn(4)}}, storage_writer=writer)
    ckpt = DCPCheckpoint(tmp_path)
    problems = ckpt.problems(check_items=True)
    assert len(problems) == 1 and "saved with serialization_format=SAFETENSORS, which bolmo does not read" in problems[0]
    with pytest.raises(CheckpointError, match="serialization_format=SAFETENSORS"):
        ckpt.read_tensor("model.a")

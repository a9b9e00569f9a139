"""Bad input: every case gives a message naming what is wrong, a non-zero exit and no output."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import BOLMO_FIXTURES, CKPT_FIXTURES

from bolmo.checkpoint.dcp_reader import DCPCheckpoint
from bolmo.checkpoint.dcp_writer import DCPWriter
from bolmo.cli import main

FSDP_CHECKPOINT = CKPT_FIXTURES / "fsdp_sharded" / "checkpoint"


def _break(name: str, root: Path) -> Path:
    """A broken copy of a good fixture checkpoint, made here rather than stored (see tests/fixtures/README.md)."""
    if name == "olmo2_corrupt_metadata":
        dst = root / name
        _copy(CKPT_FIXTURES / "olmo2" / "model_and_optim", dst / "model_and_optim")
        shutil.copyfile(CKPT_FIXTURES / "olmo2" / "config.json", dst / "config.json")
        metadata = dst / "model_and_optim" / ".metadata"
        raw = bytearray(metadata.read_bytes())
        raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)  # zero 64 bytes in the middle of the pickle
        metadata.write_bytes(bytes(raw))
        return dst
    dst = _copy(FSDP_CHECKPOINT, root / name)
    if name == "truncated_shard":
        shard = dst / "__1_0.distcp"
        shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])  # cut in half
    elif name == "missing_shard":
        (dst / "__0_0.distcp").unlink()
    elif name == "missing_metadata":
        (dst / ".metadata").unlink()
    return dst


def _convert(capsys, src: Path, dst: Path, *extra: str) -> tuple[int, str]:
    code = main(["convert", str(src), str(dst), "--to", "hf", *extra])
    return code, capsys.readouterr().err


def _verify(capsys, path: Path) -> tuple[int, str]:
    code = main(["verify", str(path)])
    return code, capsys.readouterr().out


def _copy(src: Path, dst: Path) -> Path:
    """A writable copy (the fixtures themselves stay untouched, and may be read-only)."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


@pytest.mark.parametrize("name, message", [
    ("truncated_shard", "__1_0.distcp: file is 521978 bytes, the metadata needs at least 1043956"),
    ("missing_shard", "__0_0.distcp: data file named by the metadata is missing"),
    ("missing_metadata", "missing_metadata/.metadata is missing but .distcp data files exist"),
    ("olmo2_corrupt_metadata", "model_and_optim/.metadata: corrupt DCP metadata (39107 bytes)"),
])
def test_broken_fixture_is_refused(name, message, capsys, tmp_path):
    broken = _break(name, tmp_path / "bad")
    code, err = _convert(capsys, broken, tmp_path / "out")
    assert code == 2 and message in err
    assert [p.name for p in tmp_path.iterdir()] == ["bad"]
    code, out = _verify(capsys, broken)
    assert code == 1 and message in out


def _native_with_config(tmp_path: Path, source: Path, edit) -> Path:
    root = tmp_path / "native"
    root.mkdir()
    (root / "model_and_optim").symlink_to(source / "model_and_optim")
    config = json.loads((source / "config.json").read_text())
    edit(config["model"])
    (root / "config.json").write_text(json.dumps(config))
    return root


def test_shapes_that_do_not_match_the_config(capsys, tmp_path):
    def widen(model):
        model["local_decoder"]["block_config"]["feed_forward"]["hidden_size"] = 64
        model["local_encoder"]["block_config"]["feed_forward"]["hidden_size"] = 64

    src = _native_with_config(tmp_path, CKPT_FIXTURES / "bolmo_olmo_core", widen)
    code, err = _convert(capsys, src, tmp_path / "out")
    assert code == 2 and "tensors do not match the model its config describes" in err
    assert "model.local_decoder.layers.1.mlp.up_proj.weight: checkpoint has [48, 32], model built from config has [64, 32]" in err
    assert not (tmp_path / "out").exists()
    assert _verify(capsys, src)[0] == 1


def test_olmo_shapes_that_do_not_match_the_config(capsys, tmp_path):
    src = _native_with_config(tmp_path, CKPT_FIXTURES / "olmo3", lambda m: m["block"]["feed_forward"].update(hidden_size=128))
    code, err = _convert(capsys, src, tmp_path / "out")
    assert code == 2 and "model.layers.3.mlp.gate_proj.weight: checkpoint has [256, 12], model built from config has [128, 12]" in err
    assert not (tmp_path / "out").exists()


def test_fewer_layers_in_config_than_in_checkpoint(capsys, tmp_path):
    src = _native_with_config(tmp_path, CKPT_FIXTURES / "bolmo_olmo_core", lambda m: m.update(n_layers=1))
    code, err = _convert(capsys, src, tmp_path / "out")
    assert code == 2 and "extra model.layers.1.self_attn.q_proj.weight (in checkpoint, not in model built from config)" in err


def test_hf_config_mismatch_refused_before_writing(capsys, tmp_path):
    src = _copy(BOLMO_FIXTURES / "tiny-gqa", tmp_path / "hf")
    config = json.loads((src / "config.json").read_text())
    config["num_hidden_layers"], config["layer_types"] = 5, config["layer_types"] + ["full_attention"]
    (src / "config.json").write_text(json.dumps(config))
    code = main(["convert", str(src), str(tmp_path / "out"), "--to", "olmo-core"])
    assert code == 2 and "missing model.layers.4.mlp.down_proj.weight" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unmapped_native_tensor(capsys, tmp_path):
    ckpt = DCPCheckpoint(CKPT_FIXTURES / "olmo2" / "model_and_optim")
    root = tmp_path / "native"
    with DCPWriter(root / "model_and_optim") as writer:
        for name, tensor in ckpt.iter_tensors("model"):
            writer.add(name, tensor)
        writer.add("model.blocks.0.attention.w_extra.weight", torch.zeros(2, 2))
    shutil.copyfile(CKPT_FIXTURES / "olmo2" / "config.json", root / "config.json")
    code, err = _convert(capsys, root, tmp_path / "out")
    assert code == 2 and "1 tensor(s) have no HF name in the olmo key map" in err
    assert "blocks.0.attention.w_extra.weight" in err and not (tmp_path / "out").exists()


def test_extra_hf_tensor(capsys, tmp_path):
    from safetensors.torch import load_file, save_file

    src = _copy(BOLMO_FIXTURES / "tiny-gqa", tmp_path / "hf")
    tensors = load_file(src / "model.safetensors") | {"model.surprise.weight": torch.zeros(3)}
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    code = main(["convert", str(src), str(tmp_path / "out"), "--to", "olmo-core"])
    assert code == 2 and "extra model.surprise.weight" in capsys.readouterr().err


def test_destination_exists(capsys, tmp_path):
    (tmp_path / "out").mkdir()
    code, err = _convert(capsys, CKPT_FIXTURES / "olmo2", tmp_path / "out")
    assert code == 2 and "destination exists (pass --overwrite to replace it)" in err
    assert list((tmp_path / "out").iterdir()) == []


def _hf_copy_with(tmp_path: Path, damage) -> Path:
    src = _copy(BOLMO_FIXTURES / "tiny-gqa", tmp_path / "hf")
    damage(src / "model.safetensors")
    return src


def _bad_json_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:12] = b"}}}}"
    path.write_bytes(bytes(data))


def _short_data(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])


def _huge_header(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 10**12) + data[8:])


@pytest.mark.parametrize("damage, message", [
    (_bad_json_header, "safetensors header is not valid JSON"),
    (_short_data, "data is short: the header needs 1608800 bytes of tensor data, the file has 1607800"),
    (_huge_header, "header length 1000000000000 exceeds the file size"),
])
def test_damaged_safetensors(damage, message, capsys, tmp_path):
    src = _hf_copy_with(tmp_path, damage)
    code = main(["convert", str(src), str(tmp_path / "out"), "--to", "olmo-core"])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    code, out = _verify(capsys, src)
    assert code == 1 and message in out


def test_index_naming_a_missing_file(capsys, tmp_path):
    out = tmp_path / "sharded"
    assert main(["convert", str(CKPT_FIXTURES / "olmo2"), str(out), "--to", "hf", "--shard-size", "40KB"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (out / victim).unlink()
    code, report = _verify(capsys, out)
    assert code == 1 and f"names {victim}, which is missing" in report
    code, err = _convert(capsys, out, tmp_path / "again")
    assert code == 2 and f"names {victim}, which is missing" in err and not (tmp_path / "again").exists()


def test_bad_arguments(capsys, tmp_path):
    code, err = _convert(capsys, CKPT_FIXTURES / "olmo2", tmp_path / "out", "--shard-size", "lots")
    assert code == 2 and "shard size 'lots'" in err
    (tmp_path / "map.json").write_text("[1, 2]")
    code, err = _convert(capsys, CKPT_FIXTURES / "olmo2", tmp_path / "out", "--key-map", str(tmp_path / "map.json"))
    assert code == 2 and "key map must be a JSON object" in err
    code = main(["convert", str(FSDP_CHECKPOINT), str(tmp_path / "out"), "--to", "olmo-core"])
    assert code == 2 and "cannot be converted to olmo-core" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_flipped_bytes_in_a_sharded_item(capsys, tmp_path):
    """16 bytes flipped in the middle of an item: torch would load them; the CRC-32 check names the item."""
    src = _copy(FSDP_CHECKPOINT, tmp_path / "ckpt")
    item = DCPCheckpoint(src).inventory()["model.embed.weight"].chunks[1]
    data = bytearray((src / item.file).read_bytes())
    middle = item.offset + item.length // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    (src / item.file).write_bytes(bytes(data))
    message = f"__1_0.distcp: item model.embed.weight@[150, 0] [{item.offset}, +{item.length}): corrupt item"
    code, out = _verify(capsys, src)
    assert code == 1 and message in out and "CRC-32" in out
    code, err = _convert(capsys, src, tmp_path / "out")
    assert code == 2 and message in err and "CRC-32" in err
    assert not (tmp_path / "out").exists()


def test_olmo_core_mismatch_names_the_stored_key(capsys, tmp_path):
    src = _native_with_config(tmp_path, CKPT_FIXTURES / "olmo3", lambda m: m["block"]["feed_forward"].update(hidden_size=128))
    code, err = _convert(capsys, src, tmp_path / "out")
    assert code == 2 and ("model.layers.0.mlp.down_proj.weight: checkpoint has [12, 256], model built from config has "
                          "[12, 128] (stored as model.blocks.0.feed_forward.w2.weight)") in err


def test_integer_weight_is_refused(capsys, tmp_path):
    """bf16 vs fp32 is a cast; an int32 lm_head is not a weight of the model the config describes."""
    from safetensors.torch import load_file, save_file

    src = tmp_path / "hf"
    src.mkdir()
    shutil.copyfile(CKPT_FIXTURES / "olmo2" / "hf" / "config.json", src / "config.json")
    tensors = load_file(CKPT_FIXTURES / "olmo2" / "hf" / "model.safetensors")
    save_file(tensors | {"lm_head.weight": tensors["lm_head.weight"].to(torch.int32),
                         "model.norm.weight": tensors["model.norm.weight"].bfloat16()},
              src / "model.safetensors", metadata={"format": "pt"})
    message = "lm_head.weight: checkpoint has dtype int32, model built from config has float32"
    code, out = _verify(capsys, src)
    assert code == 1 and message in out and "model.norm.weight" not in out
    for to in ("hf", "olmo-core"):
        assert main(["convert", str(src), str(tmp_path / f"out-{to}"), "--to", to]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / f"out-{to}").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(block="oops"), "model.block: expected an object, got 'oops'"),
    (lambda m: m["block"].update(sequence_mixer=[1]), "model.block.sequence_mixer: expected an object, got [1]"),
    (lambda m: m["block"]["sequence_mixer"].update(n_heads="3"),
     "model.block.sequence_mixer.n_heads: expected an integer, got '3'"),
    (lambda m: m["block"]["sequence_mixer"]["sliding_window"].update(pattern="8"),
     "model.block.sequence_mixer.sliding_window.pattern: expected a list, got '8'"),
    (lambda m: m.pop("d_model"), "missing field model.d_model"),
    (lambda m: m["block"]["sequence_mixer"].update(n_heads=0),
     "model.block.sequence_mixer.n_heads: must be a positive integer, got 0"),
])
def test_malformed_olmo_core_config_is_a_named_config_error(edit, message, capsys, tmp_path):
    src = _native_with_config(tmp_path, CKPT_FIXTURES / "olmo3", edit)
    code, out = _verify(capsys, src)
    assert code == 1 and f"{src / 'config.json'}: {message}" in out and "Traceback" not in out
    code, err = _convert(capsys, src, tmp_path / "out")
    assert code == 2 and message in err and "point at" in err


def test_bolmo_config_without_xlstm_is_a_named_config_error(capsys, tmp_path):
    src = _native_with_config(tmp_path, CKPT_FIXTURES / "bolmo_olmo_core",
                              lambda m: m["local_encoder"]["block_config"].pop("xlstm"))
    code, out = _verify(capsys, src)
    assert code == 1 and "missing field model.local_encoder.block_config.xlstm" in out


def test_interrupted_save_is_noted(capsys, tmp_path):
    for name, extra in (("step5-tmp", None), ("step6", "train")):
        step = tmp_path / name
        step.mkdir()
        (step / "model_and_optim").symlink_to(CKPT_FIXTURES / "olmo2" / "model_and_optim")
        shutil.copyfile(CKPT_FIXTURES / "olmo2" / "config.json", step / "config.json")
        if extra:
            (step / extra).mkdir()
        code, out = _verify(capsys, step)
        assert code == 0 and "note: " in out and "the checkpoint may be incomplete" in out
        assert ("'*-tmp' directory" if extra is None else "without .metadata.json") in out
    code, out = _verify(capsys, CKPT_FIXTURES / "olmo2")  # a complete checkpoint, no trainer state: no note
    assert code == 0 and "may be incomplete" not in out


def _sharded_copy(capsys, tmp_path: Path) -> tuple[Path, list[str]]:
    out = tmp_path / "sharded"
    assert main(["convert", str(CKPT_FIXTURES / "olmo2"), str(out), "--to", "hf", "--shard-size", "40KB"]) == 0
    capsys.readouterr()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    return out, sorted(set(index["weight_map"].values()))


def test_shard_file_the_index_does_not_name_is_reported(capsys, tmp_path):
    out, shards = _sharded_copy(capsys, tmp_path)
    shutil.copyfile(out / shards[0], out / "model-00001-of-00009.safetensors")
    code, report = _verify(capsys, out)
    assert code == 0 and "1 weight file(s) not named by model.safetensors.index.json" in report
    assert "model-00001-of-00009.safetensors" in report


def test_index_without_total_size_is_still_checked(capsys, tmp_path):
    """No metadata.total_size: every byte of the shards must still belong to a tensor."""
    from safetensors.torch import load_file

    out, shards = _sharded_copy(capsys, tmp_path)
    index_file = out / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    del index["metadata"]
    index_file.write_text(json.dumps(index))
    assert _verify(capsys, out)[0] == 0
    header, data, offset = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, tensor in load_file(out / shards[-1]).items():  # rewrite a shard with 8 unused bytes after each tensor
        raw = tensor.numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        data += raw + bytes(8)
        offset += len(raw) + 8
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    (out / shards[-1]).write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    code, report = _verify(capsys, out)
    assert code == 1 and "bytes of the data section between tensors" in report and "belong to no tensor" in report


def _trailing_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"XXXXXXXX")


def _gap_before_data(path: Path) -> None:
    """Every data offset moved 8 bytes on, 8 bytes inserted at the start of the data section."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    for name, entry in header.items():
        if name != "__metadata__":
            entry["data_offsets"] = [o + 8 for o in entry["data_offsets"]]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8 + data[8 + n:])


@pytest.mark.parametrize("damage, message", [
    (_trailing_bytes, "8 bytes after the 1608800 bytes of tensor data the header describes"),
    (_gap_before_data, "the data section's first 8 bytes belong to no tensor"),
])
def test_safetensors_data_not_fully_covered_is_one_problem(damage, message, capsys, tmp_path):
    """What the safetensors library refuses is refused while planning and by verify, as one line
    about the file (not one per tensor), and not listed by inspect as a sound checkpoint."""
    src = _hf_copy_with(tmp_path, damage)
    code, out = _verify(capsys, src)
    assert code == 1 and message in out and out.count("model.safetensors") <= 2
    code, err = _convert(capsys, src, tmp_path / "out")
    assert code == 2 and message in err and not (tmp_path / "out").exists()


def test_convert_arguments_that_would_write_a_wrong_checkpoint(capsys, tmp_path):
    """Each would once exit 0: a key map renaming a model's tensors (the output then contradicts its
    config), --allow-missing where nothing can be missing, --verify-against with OLMo-core names."""
    (tmp_path / "map.json").write_text(json.dumps({"lm_head.weight": "foo.weight"}))
    code, err = _convert(capsys, BOLMO_FIXTURES / "tiny-gqa", tmp_path / "out", "--key-map", str(tmp_path / "map.json"))
    assert code == 2 and "--key-map renames the tensors of checkpoints without a model config" in err
    code, err = _convert(capsys, BOLMO_FIXTURES / "tiny-gqa", tmp_path / "out", "--allow-missing")
    assert code == 2 and "--allow-missing applies to --prefix/--ema" in err
    code = main(["convert", str(BOLMO_FIXTURES / "tiny-gqa"), str(tmp_path / "out"), "--to", "olmo-core",
                 "--verify-against", str(BOLMO_FIXTURES / "tiny-gqa")])
    assert code == 2 and "it needs --to hf" in capsys.readouterr().err
    code, err = _convert(capsys, BOLMO_FIXTURES / "tiny-gqa", tmp_path / "out",
                         "--verify-against", str(tmp_path / "no"))
    assert code == 2 and "--verify-against: no such file or directory" in err
    assert not (tmp_path / "out").exists()


def test_key_map_renames_must_stay_distinct_and_named(capsys, tmp_path):
    from bolmo.checkpoint.keymaps import apply_rename_file
    from bolmo.errors import CheckpointError

    with pytest.raises(CheckpointError, match="renames to an empty name: a"):
        apply_rename_file(["a", "b"], {"a": ""}, "--key-map")
    with pytest.raises(CheckpointError, match="'b' by a, b"):
        apply_rename_file(["a", "b"], {"a": "b"}, "--key-map")


def test_destination_under_a_file_is_refused_clearly(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    code, err = _convert(capsys, CKPT_FIXTURES / "olmo2", tmp_path / "file" / "out")
    assert code == 2 and f"{tmp_path / 'file'} is not a directory" in err


def test_float16_overflow_names_the_cast(capsys, tmp_path):
    from safetensors.torch import load_file, save_file

    src = _copy(BOLMO_FIXTURES / "tiny-gqa", tmp_path / "hf")
    weights = load_file(src / "model.safetensors")
    weights["model.norm.weight"][3] = 1e6
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    code, err = _convert(capsys, src, tmp_path / "out", "--dtype", "float16")
    assert code == 2 and "'model.norm.weight' has values beyond float16's range (largest |x| 1e+06" in err
    assert not (tmp_path / "out").exists()


def test_python_convert_takes_dtype_and_shard_size_names(tmp_path):
    from bolmo.checkpoint.convert import convert
    from bolmo.errors import CheckpointError

    result = convert(BOLMO_FIXTURES / "tiny-gqa", tmp_path / "out", "hf", dtype="bfloat16", shard_size="200KB")
    assert {t.dtype for t in result.plan.tensors} == {torch.bfloat16}
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    with pytest.raises(CheckpointError, match="must be a floating-point type"):
        convert(BOLMO_FIXTURES / "tiny-gqa", tmp_path / "int", "hf", dtype=torch.int8)
    assert not (tmp_path / "int").exists()


def test_olmo_core_step_without_its_config_is_noted(capsys, tmp_path):
    src = _copy(CKPT_FIXTURES / "bolmo_olmo_core", tmp_path / "step")
    (src / "config.json").unlink()
    code = main(["convert", str(src), str(tmp_path / "out"), "--to", "hf"])
    captured = capsys.readouterr()
    assert code == 0 and "has model_and_optim/ but no config.json" in captured.out + captured.err

"""`bolmo convert` on the real fixtures: exact tensors, equivalent configs, logits through
transformers, bit-identical round trips, sharding, dtype casts, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import BOLMO_FIXTURES, CKPT_FIXTURES
from safetensors.torch import load_file

import bolmo
from bolmo.checkpoint.convert import convert
from bolmo.checkpoint.safetensors_io import HFWeights
from bolmo.errors import CheckpointError, ConfigError
from bolmo.loading import BUNDLED_MODELS

# source, convert kwargs, expected tensors (HF names)
CASES = {
    "olmo2": (CKPT_FIXTURES / "olmo2", {}, CKPT_FIXTURES / "olmo2" / "hf" / "model.safetensors"),
    "olmo3": (CKPT_FIXTURES / "olmo3", {}, CKPT_FIXTURES / "olmo3" / "hf" / "model.safetensors"),
    "fsdp-model": (CKPT_FIXTURES / "fsdp_sharded" / "checkpoint", {}, CKPT_FIXTURES / "fsdp_sharded" / "expected_model.safetensors"),
    "fsdp-ema": (CKPT_FIXTURES / "fsdp_sharded" / "checkpoint", {"prefix": "ema"},
                 CKPT_FIXTURES / "fsdp_sharded" / "expected_ema.safetensors"),
}


def _hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    weights = HFWeights(directory)
    return {name: weights.read_tensor(name) for name in weights.inventory()}


def _assert_same_tensors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("convert")


@pytest.mark.parametrize("case", CASES)
def test_fixture_converts_to_exact_tensors(case, out_dir):
    src, kwargs, expected = CASES[case]
    result = convert(src, out_dir / case, "hf", **kwargs)
    _assert_same_tensors(_hf_tensors(result.destination), load_file(expected))
    manifest = json.loads((CKPT_FIXTURES / "fsdp_sharded" / "manifest.json").read_text())
    if case.startswith("fsdp"):
        assert len(result.plan.tensors) == manifest[f"n_{kwargs.get('prefix', 'model')}_tensors"]
        assert not (result.destination / "config.json").exists()


@pytest.mark.parametrize("name", ["olmo2", "olmo3"])
def test_olmo_config_and_logits_match_olmo_core_export(name, out_dir):
    result = convert(CKPT_FIXTURES / name, out_dir / f"{name}-logits", "hf")
    config = json.loads((result.destination / "config.json").read_text())
    reference = json.loads((CKPT_FIXTURES / name / "hf" / "config.json").read_text())
    reference.pop("transformers_version")
    assert config == reference
    transformers = pytest.importorskip("transformers")
    generation = transformers.GenerationConfig.from_pretrained(result.destination)
    assert (generation.eos_token_id, generation.pad_token_id) == (config["eos_token_id"], config["pad_token_id"])
    model = transformers.AutoModelForCausalLM.from_pretrained(result.destination).eval()
    expected = load_file(CKPT_FIXTURES / name / "hf" / "expected_logits.safetensors")
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-4, rtol=0)


def test_bolmo_native_to_hf_trims_the_padded_vocabulary(out_dir):
    result = convert(CKPT_FIXTURES / "bolmo_olmo_core", out_dir / "bolmo", "hf")
    got = _hf_tensors(result.destination)
    native = load_file(CKPT_FIXTURES / "bolmo_olmo_core" / "expected_model_state.safetensors")
    assert len(got) == len(native) == 78
    assert torch.equal(got["model.local_encoder.byte_embedding.weight"], native["local_encoder.embedding.weight"][:520])
    assert torch.equal(got["lm_head.weight"], native["lm_head.w_out.weight"][:520])
    assert torch.equal(got["model.local_decoder.layers.1.pre_xlstm_layernorm.weight"],
                       native["local_decoder.blocks.1.xlstm_norm.weight"])
    assert torch.equal(got["model.layers.0.mlp.down_proj.weight"], native["blocks.0.feed_forward.w2.weight"])
    config = json.loads((result.destination / "config.json").read_text())
    assert config["model_type"] == "bolmo" and config["vocab_size"] == 520
    assert config["tokenizer_config"]["original_identifier"] == "allenai/dolma2-tokenizer"
    assert config["hidden_size"] == 32 and config["num_local_decoder_layers"] == 2 and not config["add_expanded_embeddings"]
    generation = json.loads((result.destination / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 1, 0)


def test_bolmo_native_loads_directly_and_matches_the_converted_copy(out_dir):
    import bolmo
    from bolmo.checkpoint.model_config import read_model_config

    config, kind = read_model_config(CKPT_FIXTURES / "bolmo_olmo_core")
    assert (kind, config.vocab_size) == ("bolmo-olmo-core", 520)
    assert bolmo.load(CKPT_FIXTURES / "bolmo_olmo_core").lm_head.weight.shape == (520, 32)  # 640 rows cut to 520
    converted = out_dir / "bolmo-load"
    convert(CKPT_FIXTURES / "bolmo_olmo_core", converted, "hf")
    ids = torch.tensor([[1, 76, 105, 108, 108, 36]])
    with torch.no_grad():
        native = bolmo.load(CKPT_FIXTURES / "bolmo_olmo_core")(ids).logits
        hf = bolmo.load(converted)(ids).logits
    assert native.shape == (1, 6, 520) and torch.isfinite(native).all()
    assert torch.equal(native, hf)


@pytest.mark.parametrize("src", [BOLMO_FIXTURES / "tiny-gqa", CKPT_FIXTURES / "olmo2" / "hf", CKPT_FIXTURES / "olmo3" / "hf"],
                         ids=["bolmo", "olmo2", "olmo3"])
def test_hf_to_olmo_core_to_hf_is_bit_identical(src, tmp_path):
    native = convert(src, tmp_path / "native", "olmo-core").destination
    back = convert(native, tmp_path / "back", "hf").destination
    _assert_same_tensors(_hf_tensors(back), _hf_tensors(src))
    assert json.loads((back / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    if (src / "subword_tokenizer").is_dir():
        for file in (src / "subword_tokenizer").iterdir():
            assert (back / "subword_tokenizer" / file.name).read_bytes() == file.read_bytes()


@pytest.mark.parametrize("name", ["olmo2", "olmo3"])
def test_hf_to_olmo_core_uses_olmo_core_names(name, tmp_path):
    """The reverse map reproduces the tensors OLMo-core itself saved, and torch's reader loads them."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    native = convert(CKPT_FIXTURES / name / "hf", tmp_path / "native", "olmo-core").destination
    expected = {f"model.{k}": v for k, v in load_file(CKPT_FIXTURES / name / "expected_model_state.safetensors").items()}
    loaded = {key: torch.empty_like(tensor) for key, tensor in expected.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(loaded, storage_reader=FileSystemReader(native / "model_and_optim"), no_dist=True)
    _assert_same_tensors(loaded, expected)
    config = json.loads((native / "config.json").read_text())
    reference = json.loads((CKPT_FIXTURES / name / "config.json").read_text())
    assert config["model"]["block"]["sequence_mixer"]["n_heads"] == reference["model"]["block"]["sequence_mixer"]["n_heads"]
    assert config["model"]["d_model"] == reference["model"]["d_model"]


def test_bolmo_hf_to_native_pads_with_zeros(out_dir, tmp_path):
    from bolmo.checkpoint.dcp_reader import DCPCheckpoint

    native = convert(out_dir / "bolmo", tmp_path / "native", "olmo-core").destination
    config = json.loads((native / "config.json").read_text())
    assert config["model"]["vocab_size"] == 640 and config["model"]["block"]["attention"]["n_heads"] == 4
    embedding = DCPCheckpoint(native / "model_and_optim").read_tensor("model.local_encoder.embedding.weight")
    original = load_file(CKPT_FIXTURES / "bolmo_olmo_core" / "expected_model_state.safetensors")["local_encoder.embedding.weight"]
    assert embedding.shape == (640, 32)
    assert torch.equal(embedding[:520], original[:520]) and not embedding[520:].any()


def test_dtype_cast_and_sharded_output(tmp_path):
    result = convert(CKPT_FIXTURES / "olmo2", tmp_path / "bf16", "hf", dtype=torch.bfloat16, shard_size=20_000)
    out = result.destination
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in _hf_tensors(out).values())
    expected = {k: v.bfloat16() for k, v in load_file(CKPT_FIXTURES / "olmo2" / "hf" / "model.safetensors").items()}
    _assert_same_tensors(_hf_tensors(out), expected)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with open(out / shards[0], "rb") as f:  # our incremental writer's files are what safetensors expects
        assert json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"] == {"format": "pt"}


def test_key_map_renames_outputs(tmp_path):
    result = convert(CKPT_FIXTURES / "fsdp_sharded" / "checkpoint", tmp_path / "renamed", "hf",
                     key_map={"head.weight": "lm_head.weight"})
    got = _hf_tensors(result.destination)
    assert "lm_head.weight" in got and "head.weight" not in got
    with pytest.raises(CheckpointError, match="renames tensor.*not in the output: nope"):
        convert(CKPT_FIXTURES / "fsdp_sharded" / "checkpoint", tmp_path / "bad", "hf", key_map={"nope": "x"})
    assert not (tmp_path / "bad").exists()


def test_verify_against_reference(tmp_path):
    convert(CKPT_FIXTURES / "olmo2", tmp_path / "ok", "hf", verify_against=CKPT_FIXTURES / "olmo2" / "hf")
    with pytest.raises(CheckpointError) as info:
        convert(CKPT_FIXTURES / "olmo2", tmp_path / "wrong", "hf", verify_against=CKPT_FIXTURES / "olmo3" / "hf")
    message = str(info.value)
    assert "missing model.layers.3.mlp.down_proj.weight" in message and "nothing was written" in message
    assert message.count("missing ") == 11  # the whole fourth layer, every tensor listed
    assert not (tmp_path / "wrong").exists()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("error", [OSError("disk on fire"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
@pytest.mark.parametrize("target", ["hf", "olmo-core"])
def test_failure_mid_write_leaves_nothing(error, target, tmp_path, monkeypatch):
    """The 6th tensor write fails (an I/O error or Ctrl-C): no DST, no temporary directory."""
    from bolmo.checkpoint.dcp_writer import DCPWriter
    from bolmo.checkpoint.safetensors_io import SafetensorsWriter

    cls, method = (SafetensorsWriter, "write") if target == "hf" else (DCPWriter, "add")
    original, written = getattr(cls, method), []

    def failing(self, name, data):
        if len(written) == 5:
            raise error
        written.append(name)
        return original(self, name, data)

    monkeypatch.setattr(cls, method, failing)
    src = CKPT_FIXTURES / "olmo2" / ("hf" if target == "olmo-core" else "")
    with pytest.raises(type(error)):
        convert(src, tmp_path / "out", target)
    assert len(written) == 5 and not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_full_disk_is_reported(tmp_path, monkeypatch):
    import errno

    from bolmo.checkpoint.safetensors_io import SafetensorsWriter

    def full(self, name, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SafetensorsWriter, "write", full)
    with pytest.raises(CheckpointError, match="no space left on device while writing; nothing was written"):
        convert(CKPT_FIXTURES / "olmo2", tmp_path / "deep" / "out", "hf")
    assert not (tmp_path / "deep" / "out").exists() and _leftovers(tmp_path / "deep") == []


def test_existing_destination_needs_overwrite(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    with pytest.raises(CheckpointError, match="destination exists"):
        convert(CKPT_FIXTURES / "olmo2", dst, "hf")
    assert (dst / "keep.txt").read_text() == "old"
    # --overwrite once replaces only what looks like a checkpoint; twice, anything.
    with pytest.raises(CheckpointError, match="does not look like a checkpoint.*--overwrite twice"):
        convert(CKPT_FIXTURES / "olmo2", dst, "hf", overwrite=True)
    assert (dst / "keep.txt").read_text() == "old"
    convert(CKPT_FIXTURES / "olmo2", dst, "hf", overwrite=2)
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").is_file()
    (dst / "keep.txt").write_text("old")
    convert(CKPT_FIXTURES / "olmo2", dst, "hf", overwrite=True)  # now a checkpoint: once is enough
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").is_file()
    assert _leftovers(tmp_path) == []


def test_missing_prefix_lists_available_ones(tmp_path):
    with pytest.raises(CheckpointError, match=r"no tensors under 'ema\.'; available prefixes: model \(36\), optim \(108\)"):
        convert(CKPT_FIXTURES / "olmo2", tmp_path / "out", "hf", prefix="ema")


def test_integer_and_float8_dtypes_safetensors_stores(tmp_path):
    import warnings

    import torch.distributed.checkpoint as dcp

    state = {"u16": torch.arange(6).to(torch.uint16), "u32": torch.arange(6).to(torch.uint32),
             "u64": torch.arange(6).to(torch.uint64), "c64": torch.randn(3, dtype=torch.complex64),
             "e4m3fnuz": torch.randn(4).to(torch.float8_e4m3fnuz), "e5m2fnuz": torch.randn(4).to(torch.float8_e5m2fnuz)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": state}, checkpoint_id=tmp_path / "dcp", no_dist=True)
        dcp.save({"model": {"c128": torch.zeros(2, dtype=torch.complex128), "e8m0": torch.ones(2).to(torch.float8_e8m0fnu)}},
                 checkpoint_id=tmp_path / "unsupported", no_dist=True)
    got = load_file(convert(tmp_path / "dcp", tmp_path / "hf", "hf").destination / "model.safetensors")
    assert sorted(got) == sorted(state)
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name].view(torch.uint8), tensor.view(torch.uint8)), name
    with pytest.raises(CheckpointError, match=r"2 tensor\(s\) have a dtype safetensors cannot store: "
                                              r"model.c128 \(complex128\), model.e8m0 \(float8_e8m0fnu\)"):
        convert(tmp_path / "unsupported", tmp_path / "no", "hf")
    assert not (tmp_path / "no").exists() and _leftovers(tmp_path) == []


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("src, dst, message", [
    ("self", "self/../self", "the destination is the source"),
    ("anc/src", "anc", "the destination contains the source"),
    ("anc/src", "anc/src/out", "the destination is inside the source"),
    ("self", "link", "the destination is the source"),
])
def test_destination_that_would_move_or_delete_the_source(src, dst, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    convert(CKPT_FIXTURES / "olmo2", "self", "hf")
    convert(CKPT_FIXTURES / "olmo2", "anc/src", "hf")
    Path("link").symlink_to("self")
    before = _tree(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        convert(src, dst, "olmo-core", overwrite=True)
    from bolmo.checkpoint.convert import execute, plan_conversion  # the lower-level entry point checks too

    with pytest.raises(CheckpointError, match=message):
        execute(plan_conversion(src, "olmo-core"), dst, overwrite=True)
    assert _tree(tmp_path) == before and _leftovers(tmp_path) == []


def test_merge_and_byteify_refuse_to_replace_an_input(tmp_path):
    from bolmo.byteify import byteify_init
    from bolmo.merge import merge

    # The check comes before anything is read, so the inputs need not exist (and nothing real is at risk).
    with pytest.raises(CheckpointError, match="the destination is the source"):
        merge(tmp_path / "bolmo", tmp_path / "base", tmp_path / "post", tmp_path / "base", overwrite=True)
    with pytest.raises(CheckpointError, match="the destination contains the source"):
        byteify_init(tmp_path / "teacher", tmp_path, overwrite=True)


def test_leftover_of_a_killed_run_is_swept(tmp_path):
    """A SIGKILLed run cannot remove its temporary directory; the next run removes it once no live
    process holds its lock, and leaves a live run's alone."""
    import fcntl
    import os
    import socket
    import time

    prefix = f".out.tmp-{socket.gethostname()}-"
    dead, live, young = (tmp_path / f"{prefix}{tag}" for tag in ("dead", "live", "young"))
    for directory in (dead, live, young):
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(b"partial")
    for directory in (dead, live):
        os.utime(directory, (time.time() - 3600, time.time() - 3600))
    held = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        convert(CKPT_FIXTURES / "olmo2", tmp_path / "out", "hf")
    finally:
        os.close(held)
    assert _leftovers(tmp_path) == sorted([live.name, young.name])


def _save_dcp(state: dict, path: Path) -> Path:
    """A single-process `dcp.save`, as a user would write it."""
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=path, no_dist=True)
    return path


def test_empty_prefix_takes_every_tensor_with_its_name(tmp_path):
    """`dcp.save(model.state_dict())` has no top-level key: --prefix '' consolidates it as it is."""
    state = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).state_dict()
    src = _save_dcp(state, tmp_path / "noprefix")
    with pytest.raises(CheckpointError, match=r"no tensors under 'model\.'.*--prefix '' takes every tensor"):
        convert(src, tmp_path / "default", "hf")
    result = convert(src, tmp_path / "all", "hf", prefix="")
    _assert_same_tensors(_hf_tensors(result.destination), dict(state))
    assert result.plan.prefix == ""


def _model_and_ema(path: Path, skip_in_ema: str) -> Path:
    from bolmo.checkpoint.dcp_reader import DCPCheckpoint
    from bolmo.checkpoint.dcp_writer import DCPWriter

    ckpt = DCPCheckpoint(CKPT_FIXTURES / "fsdp_sharded" / "checkpoint")
    with DCPWriter(path) as writer:
        for prefix in ("model", "ema"):
            for name, tensor in ckpt.iter_tensors(prefix):
                if not (prefix == "ema" and skip_in_ema in name):
                    writer.add(name, tensor)
    return path


def test_ema_lacking_model_tensors_fails_unless_allowed(tmp_path):
    src = _model_and_ema(tmp_path / "ckpt", "blocks.0.norm.")
    with pytest.raises(CheckpointError, match=r"2 tensor\(s\) that 'model' has and 'ema' lacks \(buffers\?\): "
                                              r"blocks\.0\.norm\.bias, blocks\.0\.norm\.weight; pass --allow-missing"):
        convert(src, tmp_path / "refused", "hf", prefix="ema")
    assert not (tmp_path / "refused").exists()
    result = convert(src, tmp_path / "allowed", "hf", prefix="ema", allow_missing=True)
    assert "omitted 2 tensor(s)" in result.plan.warnings[0] and "blocks.0.norm.weight" in result.plan.warnings[0]
    assert len(_hf_tensors(result.destination)) == 21


def test_model_and_optim_itself_reads_its_step_directory(tmp_path):
    """The path the download guide prints: HF names, the tokenizer's 520 rows and a config.json."""
    result = convert(CKPT_FIXTURES / "bolmo_olmo_core" / "model_and_optim", tmp_path / "hf", "hf")
    assert result.plan.source.path == CKPT_FIXTURES / "bolmo_olmo_core"
    assert "is the DCP directory of the OLMo-core checkpoint" in result.plan.source.notes[0]
    assert _hf_tensors(result.destination)["lm_head.weight"].shape == (520, 32)
    assert json.loads((result.destination / "config.json").read_text())["model_type"] == "bolmo"


def test_model_and_optim_with_an_unusable_step_config_reads_generically(tmp_path):
    from bolmo.checkpoint.sources import SourceKind, open_checkpoint

    step = tmp_path / "step"
    step.mkdir()
    (step / "model_and_optim").symlink_to(CKPT_FIXTURES / "olmo2" / "model_and_optim")
    (step / "config.json").write_text(json.dumps({"model": {"name": "default", "block": "oops"}}))
    source = open_checkpoint(step / "model_and_optim")
    assert source.kind is SourceKind.DCP and "model.block: expected an object, got 'oops'" in source.notes[0]
    with pytest.raises(ConfigError, match=r"model\.block: expected an object, got 'oops' \(to convert the weights "
                                          r"without this config, point at .*step/model_and_optim\)"):
        convert(step, tmp_path / "out", "hf")


def test_verify_against_is_checked_before_anything_is_written(tmp_path, monkeypatch):
    from bolmo.checkpoint import convert as convert_module
    from bolmo.checkpoint.convert import plan_conversion

    with pytest.raises(CheckpointError, match="needs an HF directory or a .safetensors file, not a DCP checkpoint"):
        plan_conversion(CKPT_FIXTURES / "olmo2", "hf", verify_against=CKPT_FIXTURES / "olmo2")
    monkeypatch.setattr(convert_module, "_write_hf", lambda *args: pytest.fail("data written before the check"))
    with pytest.raises(CheckpointError, match="would differ from the reference"):
        convert(CKPT_FIXTURES / "olmo2", tmp_path / "out", "hf", verify_against=CKPT_FIXTURES / "olmo3" / "hf")
    with pytest.raises(CheckpointError, match="no such file or directory"):
        convert(CKPT_FIXTURES / "olmo2", tmp_path / "out", "hf", verify_against=tmp_path / "absent")
    plan = plan_conversion(CKPT_FIXTURES / "olmo2", "hf",
                           verify_against=CKPT_FIXTURES / "olmo2" / "hf" / "model.safetensors")
    assert len(plan.tensors) == 36


@pytest.mark.parametrize("prefix", ["ema", "model", ""])
def test_prefix_is_refused_for_hf_sources(prefix, tmp_path):
    for to in ("hf", "olmo-core"):
        with pytest.raises(CheckpointError, match="--prefix/--ema pick a top-level key of a DCP checkpoint"):
            convert(CKPT_FIXTURES / "olmo2" / "hf", tmp_path / to, to, prefix=prefix)


def test_dtype_rewrites_every_dtype_field_of_an_olmo_core_config(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "model.safetensors").symlink_to(CKPT_FIXTURES / "olmo2" / "hf" / "model.safetensors")
    config = json.loads((CKPT_FIXTURES / "olmo2" / "hf" / "config.json").read_text())
    config["torch_dtype"] = config.pop("dtype")  # transformers 4.x spelling: kept in hf_overrides
    (hf / "config.json").write_text(json.dumps(config))
    native = convert(hf, tmp_path / "native", "olmo-core", dtype=torch.bfloat16).destination
    text = (native / "config.json").read_text()
    found = [value for key, value in _all_items(json.loads(text)) if key in ("dtype", "torch_dtype")]
    # OLMo-core's own config of this model has 7 dtype fields (fixture olmo2/config.json), plus the
    # torch_dtype kept in hf_overrides.
    olmo_core = [v for k, v in _all_items(json.loads((CKPT_FIXTURES / "olmo2" / "config.json").read_text())) if k == "dtype"]
    assert len(olmo_core) == 7 and found == ["bfloat16"] * 8


def _all_items(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _all_items(value)
    elif isinstance(node, list):
        for item in node:
            yield from _all_items(item)


def _fsdp_fixture_without(path: Path, drop: set[str]) -> Path:
    """The FSDP fixture's model, EMA and optimizer state, less the named entries."""
    from bolmo.checkpoint.dcp_reader import DCPCheckpoint
    from bolmo.checkpoint.dcp_writer import DCPWriter

    ckpt = DCPCheckpoint(CKPT_FIXTURES / "fsdp_sharded" / "checkpoint")
    with DCPWriter(path) as writer:
        for prefix in ("model", "ema", "optim"):
            for name, tensor in ckpt.iter_tensors(prefix):
                if name not in drop:
                    writer.add(name, tensor)
    return path


def test_ema_takes_what_training_does_not_update_from_the_model(tmp_path):
    """A parameter without optimizer state (frozen, or a buffer) that the EMA lacks is the model's own
    value; the plan names it. A trained parameter the EMA lacks is really missing."""
    frozen = "blocks.0.norm.bias"
    src = _fsdp_fixture_without(tmp_path / "ckpt", {f"ema.{frozen}"} | {f"optim.state.{frozen}.{field}"
                                                                      for field in ("exp_avg", "exp_avg_sq", "step")})
    result = convert(src, tmp_path / "hf", "hf", prefix="ema")
    assert result.plan.from_model == [frozen] and result.plan.warnings == []
    expected = _hf_tensors(CKPT_FIXTURES / "fsdp_sharded" / "expected_ema.safetensors")
    model = _hf_tensors(CKPT_FIXTURES / "fsdp_sharded" / "expected_model.safetensors")
    _assert_same_tensors(_hf_tensors(result.destination), expected | {frozen: model[frozen]})

    src = _fsdp_fixture_without(tmp_path / "trained", {"ema.blocks.0.norm.weight"})
    with pytest.raises(CheckpointError, match=r"1 trained parameter\(s\) that 'model' has and 'ema' lacks: "
                                              r"blocks\.0\.norm\.weight; pass --allow-missing"):
        convert(src, tmp_path / "refused", "hf", prefix="ema")
    result = convert(src, tmp_path / "allowed", "hf", prefix="ema", allow_missing=True)
    assert result.plan.from_model == [] and "omitted 1 trained parameter(s)" in result.plan.warnings[0]


def test_subword_model_keeps_its_tokenizer_through_both_formats(tmp_path):
    teacher = BUNDLED_MODELS["default-teacher"]
    convert(teacher, tmp_path / "native", "olmo-core")
    convert(tmp_path / "native", tmp_path / "hf", "hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "hf" / name).read_bytes() == (teacher / name).read_bytes()
    text = "The :mod:`json` module"
    assert bolmo.load(tmp_path / "hf").score([text])[0].nats == bolmo.load(teacher).score([text])[0].nats

"""`bolmo convert` on the real fixtures: exact tensors, equivalent configs, logits through
transformers, bit-identical round trips, sharding, dtype casts, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import BOLMO_FIXTURES, CKPT_FIXTURES
from safetensors.torch import load_file

from bolmo.checkpoint.convert import convert
from bolmo.checkpoint.safetensors_io import HFWeights
from bolmo.errors import CheckpointError

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


def test_bolmo_native_loads_directly_and_matches_the_converted_copy(out_dir):
    import bolmo
    from bolmo.checkpoint.olmo_core import load_bolmo_olmo_core

    config, state = load_bolmo_olmo_core(CKPT_FIXTURES / "bolmo_olmo_core")
    assert config.vocab_size == 520 and state["lm_head.weight"].shape == (520, 32)
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
    convert(CKPT_FIXTURES / "olmo2", dst, "hf", overwrite=True)
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").is_file()
    assert _leftovers(tmp_path) == []


def test_missing_prefix_lists_available_ones(tmp_path):
    with pytest.raises(CheckpointError, match=r"no tensors under 'ema\.'; available prefixes: model \(36\), optim \(108\)"):
        convert(CKPT_FIXTURES / "olmo2", tmp_path / "out", "hf", prefix="ema")

"""`bolmo merge`: task arithmetic M + alpha * (post - base) on the global transformer and final norm."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import bolmo
from bolmo.byteify import ByteifyOptions, byteify_init
from bolmo.checkpoint.convert import convert
from bolmo.cli import main
from bolmo.errors import BolmoError
from bolmo.merge import merge
from conftest import CKPT_FIXTURES, bits_per_byte_by_hand
from olmo_helpers import build_hf_model, save_hf_model, train_tokenizer

SMALL = ByteifyOptions(encoder_layers=1, decoder_layers=1, local_heads=4)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """base and post (same architecture, different weights), a Bolmo byteified from base (float32)
    and the same Bolmo in bfloat16."""
    root = tmp_path_factory.mktemp("merge")
    base = save_hf_model(build_hf_model("olmo3", seed=0), root / "base")
    post = save_hf_model(build_hf_model("olmo3", seed=1), root / "post")
    bolmo_dir = byteify_init(base, root / "bolmo", SMALL).destination
    convert(bolmo_dir, root / "bolmo_bf16", "hf", dtype=torch.bfloat16)
    return {"base": base, "post": post, "bolmo": bolmo_dir, "bolmo_bf16": root / "bolmo_bf16"}


def _state(directory):
    return load_file(directory / "model.safetensors")


def _expected(m: torch.Tensor, b: torch.Tensor, p: torch.Tensor, alpha: float) -> torch.Tensor:
    return (m.float() + alpha * (p.float() - b.float())).to(m.dtype)


@pytest.mark.parametrize("which", ["bolmo", "bolmo_bf16"])
def test_merged_tensors_follow_the_formula(dirs, which, tmp_path):
    result = merge(dirs[which], dirs["base"], dirs["post"], tmp_path / "out", alpha=0.37)
    m, b, p, out = _state(dirs[which]), _state(dirs["base"]), _state(dirs["post"]), _state(tmp_path / "out")
    expected_merged = sorted(n for n in m if n.startswith("model.layers.") or n == "model.norm.weight")
    assert sorted(result.merged) == expected_merged and len(expected_merged) == 4 * 11 + 1
    assert sorted(result.copied) == sorted(set(m) - set(expected_merged))
    assert set(out) == set(m)
    for name in result.merged:
        assert out[name].dtype == m[name].dtype
        assert torch.equal(out[name], _expected(m[name], b[name], p[name], 0.37)), name
        assert not torch.equal(out[name], m[name]), name
    for name in result.copied:
        assert torch.equal(out[name], m[name]), name
    assert any("lm_head.weight" in note for note in result.notes)
    src_config = json.loads((dirs[which] / "config.json").read_text())
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == src_config
    assert (tmp_path / "out" / "subword_tokenizer" / "tokenizer.json").is_file()
    model = bolmo.load(tmp_path / "out")
    expected = bits_per_byte_by_hand(model, "merged model")
    assert model.score(["merged model"])[0].bits_per_byte == pytest.approx(expected, rel=1e-5)


def test_identities(dirs, tmp_path):
    m = _state(dirs["bolmo_bf16"])
    merge(dirs["bolmo_bf16"], dirs["base"], dirs["post"], tmp_path / "zero", alpha=0.0)
    merge(dirs["bolmo_bf16"], dirs["base"], dirs["base"], tmp_path / "same", alpha=1.0)
    for out in (_state(tmp_path / "zero"), _state(tmp_path / "same")):
        assert set(out) == set(m)
        for name, tensor in m.items():
            assert out[name].dtype == tensor.dtype
            assert torch.equal(out[name].view(torch.int16), tensor.view(torch.int16)), name  # bit for bit


def test_instructify_embeddings(dirs, tmp_path):
    result = merge(dirs["bolmo"], dirs["base"], dirs["post"], tmp_path / "out", alpha=2.0, instructify_embeddings=True)
    name = "model.local_encoder.subword_embedding.weight"
    assert name in result.merged
    m, b, p, out = _state(dirs["bolmo"]), _state(dirs["base"]), _state(dirs["post"]), _state(tmp_path / "out")
    rows = m[name].shape[0]
    emb = "model.embed_tokens.weight"
    assert torch.equal(out[name], _expected(m[name], b[emb][:rows], p[emb][:rows], 2.0))


def _write_variant(src, dst, drop: str | None = None, **config_changes) -> None:
    """A copy of an HF subword checkpoint without tensor `drop` / with config changes."""
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **config_changes}))
    state = {k: v for k, v in load_file(src / "model.safetensors").items() if k != drop}
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})


def test_mismatches_are_errors_and_write_nothing(dirs, tmp_path):
    wider = save_hf_model(build_hf_model("olmo3", seed=2, intermediate_size=64), tmp_path / "wider")
    with pytest.raises(BolmoError, match=r"model\.layers\.0\.mlp\.up_proj\.weight") as err:
        merge(dirs["bolmo"], dirs["base"], wider, tmp_path / "out")
    assert "--post" in str(err.value) and "--base" in str(err.value)
    _write_variant(dirs["post"], tmp_path / "lacking", drop="model.layers.2.self_attn.k_norm.weight")
    with pytest.raises(BolmoError, match=r"model\.layers\.2\.self_attn\.k_norm\.weight"):
        merge(dirs["bolmo"], dirs["base"], tmp_path / "lacking", tmp_path / "out")
    # A Bolmo made from a different teacher: its blocks do not fit the delta.
    other = byteify_init(save_hf_model(build_hf_model("olmo3", seed=3, intermediate_size=64), tmp_path / "t2"),
                         tmp_path / "other_bolmo", SMALL).destination
    with pytest.raises(BolmoError, match=r"mlp\.gate_proj\.weight: Bolmo has \[64, 32\], --post has \[48, 32\]"):
        merge(other, dirs["base"], dirs["post"], tmp_path / "out")
    with pytest.raises(BolmoError, match="expected a Bolmo model"):
        merge(dirs["base"], dirs["base"], dirs["post"], tmp_path / "out")
    with pytest.raises(BolmoError, match="alpha"):
        merge(dirs["bolmo"], dirs["base"], dirs["post"], tmp_path / "out", alpha=float("nan"))
    # A finite alpha whose product overflows float32: blamed on alpha, not on a (finite) source.
    with pytest.raises(BolmoError, match=r"overflows torch.float32 with alpha 1e\+40; the sources are finite"):
        merge(dirs["bolmo"], dirs["base"], dirs["post"], tmp_path / "out", alpha=1e40)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary leftovers


def test_cli(dirs, tmp_path, capsys):
    args = ["merge", "--bolmo", str(dirs["bolmo"]), "--base", str(dirs["base"]), "--post", str(dirs["post"]),
            "--alpha", "0.5", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    report = capsys.readouterr().out
    assert "merged:   45 tensors" in report and "lm_head.weight" in report
    assert main(args) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--instructify-embeddings"]) == 0
    bad = ["merge", "--bolmo", str(dirs["bolmo"]), "--base", str(dirs["base"]), "--post", str(CKPT_FIXTURES / "olmo2" / "hf"),
           "--out", str(tmp_path / "bad")]
    assert main(bad) == 2
    assert "nothing was written" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_olmo_core_inputs(tmp_path):
    """OLMo-core base + its HF export as post (a zero delta): the output is the input, bit for bit."""
    bolmo_dir = byteify_init(CKPT_FIXTURES / "olmo2", tmp_path / "bolmo",
                             ByteifyOptions(subword_tokenizer=str(train_tokenizer(tmp_path / "tok")))).destination
    result = merge(bolmo_dir, CKPT_FIXTURES / "olmo2", CKPT_FIXTURES / "olmo2" / "hf", tmp_path / "out")
    assert len(result.merged) == 3 * 11 + 1
    m, out = _state(bolmo_dir), _state(tmp_path / "out")
    assert set(out) == set(m) and all(torch.equal(out[k], m[k]) for k in m)


def test_a_long_list_of_problems_is_cut_with_a_count():
    from bolmo.checkpoint.inventory import listed

    text = listed([f"missing t{i}" for i in range(93)])
    assert text.count("\n  ") == 21 and text.endswith("... and 73 more") and "missing t19" in text
    assert listed(["one"]) == "\n  one"

"""`bolmo byteify-init`: a Bolmo model whose global transformer is the teacher's, exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import bolmo
from bolmo.byteify import ByteifyOptions, bolmo_config_for_teacher, byteify_init, rescale_out_projection
from bolmo.cli import main
from bolmo.config import BolmoConfig
from bolmo.errors import ConfigError, TokenizerError
from bolmo.model.local import LocalEncoder
from bolmo.olmo.config import OlmoConfig
from conftest import CKPT_FIXTURES, bits_per_byte_by_hand
from olmo_helpers import VOCAB, build_hf_model, save_hf_model, train_tokenizer

OPTIONS = ByteifyOptions(encoder_layers=1, decoder_layers=2, local_heads=4, seed=3)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    hf = build_hf_model("olmo3")
    return save_hf_model(hf, tmp_path_factory.mktemp("teacher")), {k: v.clone() for k, v in hf.state_dict().items()}


@pytest.fixture(scope="module")
def built(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("byteified") / "bolmo"
    result = byteify_init(teacher[0], out, OPTIONS)
    return result, load_file(out / "model.safetensors")


def test_global_blocks_and_embeddings_come_from_the_teacher(teacher, built):
    _, teacher_state = teacher
    result, state = built
    blocks = [k for k in teacher_state if k.startswith("model.layers.")]
    assert len(blocks) == 4 * 11 and sorted(blocks) == sorted(result.copied)
    for name in blocks:
        assert torch.equal(state[name], teacher_state[name]), name
    assert torch.all(state["model.norm.weight"] == 1.0)  # the reference recipe's final norm
    embeddings = teacher_state["model.embed_tokens.weight"]
    assert torch.equal(state["model.local_encoder.subword_embedding.weight"], embeddings[:VOCAB])
    assert result.config.subword_vocab_size == VOCAB
    assert all(t.dtype == torch.float32 for t in state.values())


def test_fresh_parts_follow_the_init_scheme(teacher, built):
    _, teacher_state = teacher
    result, state = built
    d = result.config.hidden_size
    for name, tensor in state.items():
        if name.endswith("igate_preact.bias"):
            assert torch.all(tensor == -10.0), name
    assert len([n for n in state if n.endswith("igate_preact.bias")]) == 3
    eye = torch.eye(d)
    assert torch.equal(state["model.local_encoder.boundary_predictor_module.q_proj_layer.weight"], eye)
    assert torch.equal(state["model.local_encoder.boundary_predictor_module.k_proj_layer.weight"], eye)
    head = state["lm_head.weight"]
    assert head.shape == (520, d) and head.abs().max() <= 0.06 and 0.01 < head.std() < 0.03
    assert torch.all(state["model.local_decoder.initial_norm.weight"] == 1.0)
    emb = teacher_state["model.embed_tokens.weight"]
    byte = state["model.local_encoder.byte_embedding.weight"]
    assert torch.allclose(byte.mean(0), emb.mean(0), atol=4 * emb.std(0).max() / 520**0.5)
    assert torch.allclose(byte.std(0), emb.std(0), rtol=0.25)


def test_row_rescaling_matches_teacher_statistics_exactly():
    config = BolmoConfig.preset("tiny")
    torch.manual_seed(0)
    encoder = LocalEncoder(config)
    mu, sigma = torch.randn(config.hidden_size), torch.rand(config.hidden_size) + 0.5
    torch.manual_seed(1)
    rescale_out_projection(encoder, mu, sigma, "row", samples=1024)
    torch.manual_seed(1)  # the same random bytes again
    ids = torch.randint(0, config.vocab_size, (1, 1024))
    with torch.no_grad():
        y = encoder.out_projection(encoder(ids, ids % config.subword_vocab_size)[0])[0]
    torch.testing.assert_close(y.mean(0), mu, atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(0), sigma, atol=1e-4, rtol=1e-4)


def test_output_loads_runs_and_is_reproducible(teacher, built, tmp_path):
    result, state = built
    model = bolmo.load(result.destination)
    config = json.loads((result.destination / "config.json").read_text())
    assert config["tokenizer_config"]["original_identifier"] == "subword_tokenizer"
    assert (result.destination / "subword_tokenizer" / "tokenizer.json").is_file()
    ids, mask = model.tokenizer.batch(["Hello world", "héllo"])
    with torch.no_grad():
        assert torch.isfinite(model(ids, attention_mask=mask).logits).all()
    text = "def main():\n    pass\n"
    assert model.score([text])[0].bits_per_byte == pytest.approx(bits_per_byte_by_hand(model, text), rel=1e-5)
    again = byteify_init(teacher[0], tmp_path / "again", OPTIONS)
    assert all(torch.equal(t, state[k]) for k, t in load_file(again.destination / "model.safetensors").items())
    other = byteify_init(teacher[0], tmp_path / "other", ByteifyOptions(encoder_layers=1, decoder_layers=2,
                                                                      local_heads=4, seed=4))
    other_state = load_file(other.destination / "model.safetensors")
    assert not torch.equal(other_state["lm_head.weight"], state["lm_head.weight"])
    assert torch.equal(other_state["model.layers.0.mlp.up_proj.weight"], state["model.layers.0.mlp.up_proj.weight"])


def test_olmo_core_teacher(tmp_path):
    """An OLMo-core (DCP) teacher gives the same global blocks as its HF export."""
    tokenizer = train_tokenizer(tmp_path / "tok")
    result = byteify_init(CKPT_FIXTURES / "olmo2", tmp_path / "out",
                          ByteifyOptions(subword_tokenizer=str(tokenizer), final_norm="teacher"))
    state = load_file(result.destination / "model.safetensors")
    exported = load_file(CKPT_FIXTURES / "olmo2" / "hf" / "model.safetensors")
    for name in result.copied:
        assert torch.equal(state[name], exported[name]), name
    assert "model.norm.weight" in result.copied  # --final-norm teacher
    assert bolmo.load(result.destination).config.subword_vocab_size == result.config.subword_vocab_size


@pytest.mark.parametrize("d, width", [(2048, 2816), (4096, 5504), (128, 256)])
def test_default_local_mlp_width_is_the_released_one(d, width):
    teacher = OlmoConfig(hidden_size=d, num_attention_heads=16, num_hidden_layers=2)
    assert bolmo_config_for_teacher(teacher, 100, ByteifyOptions()).local_intermediate_size == width


def test_errors(teacher, tmp_path, capsys):
    with pytest.raises(ConfigError, match="hidden_size 32"):
        byteify_init(teacher[0], tmp_path / "x", ByteifyOptions(local_d_model=64))
    with pytest.raises(TokenizerError, match="--subword-tokenizer"):
        byteify_init(CKPT_FIXTURES / "olmo2" / "hf", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert main(["byteify-init", "--teacher", str(teacher[0]), "--out", str(tmp_path / "y"),
                 "--local-heads", "3"]) == 2
    assert "--local-heads 3: the teacher's hidden_size 32" in capsys.readouterr().err  # not "config.json"
    assert not (tmp_path / "y").exists()
    (tmp_path / "exists").mkdir()
    assert main(["byteify-init", "--teacher", str(teacher[0]), "--out", str(tmp_path / "exists")]) == 2
    assert list((tmp_path / "exists").iterdir()) == []
    assert main(["byteify-init", "--teacher", str(teacher[0]), "--out", str(tmp_path / "exists"), "--overwrite",
                 "--decoder-layers", "1", "--seed", "5"]) == 0
    assert bolmo.load(tmp_path / "exists").config.num_local_decoder_layers == 1

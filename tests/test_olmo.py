"""Subword OLMo 2 / Olmo 3 models: logits and greedy decoding against transformers itself, the
fixtures' expected logits, scoring in bits per byte, generation arguments, config parsing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import bolmo
from bolmo.errors import ConfigError, GenerationError, TokenizerError
from bolmo.model.olmo import OlmoForCausalLM
from bolmo.olmo.config import OlmoConfig
from bolmo.generation.continuation import Continuation, GenerateOptions
from bolmo.generation.engine import Row
from bolmo.generation.olmo_engine import OlmoEngine
from bolmo.generation.sampling import RowSampler, SamplingParams
from conftest import CKPT_FIXTURES
from olmo_helpers import build_hf_model, save_hf_model

PROMPTS = ["def main():\n    ", "The quick brown fox", "héllo wörld, ça va?"]
MODEL_TYPES = ["olmo2", "olmo3"]


N_GREEDY = 25


@pytest.fixture(scope="module", params=MODEL_TYPES)
def pair(request, tmp_path_factory):
    """(transformers model, our model loaded with bolmo.load from its save_pretrained directory,
    transformers' greedy continuation of each prompt: N_GREEDY tokens, never stopping at EOS)."""
    hf = build_hf_model(request.param)
    directory = save_hf_model(hf, tmp_path_factory.mktemp(request.param))
    model = bolmo.load(directory)
    hf.generation_config.eos_token_id = None
    greedy = {}
    for prompt in PROMPTS:
        x = torch.tensor([model.tokenizer.encode(prompt)])
        out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=N_GREEDY,
                          pad_token_id=1)
        greedy[prompt] = out[0, x.shape[1]:].tolist()
    return hf, model, greedy


@pytest.mark.parametrize("fixture", ["olmo2/hf", "olmo3/hf", "olmo2", "olmo3"])
def test_fixture_logits(fixture):
    """HF exports and the OLMo-core (DCP) originals give transformers' logits."""
    directory = CKPT_FIXTURES / fixture
    expected = load_file(CKPT_FIXTURES / fixture.split("/")[0] / "hf" / "expected_logits.safetensors")
    model = bolmo.load(directory)
    assert isinstance(model, OlmoForCausalLM) and model.tokenizer is None
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-4, rtol=0)
    with pytest.raises(TokenizerError, match="tokenizer"):
        model.score(["no tokenizer"])


def test_logits_match_transformers(pair):
    hf, model, _ = pair
    ids, mask = model.tokenizer.batch(PROMPTS, padding_side="right")
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        for row, prompt in enumerate(PROMPTS):
            single = torch.tensor([model.tokenizer.encode(prompt)])
            ref = hf(single).logits[0]
            torch.testing.assert_close(ours[row, : single.shape[1]], ref, atol=1e-4, rtol=0)
            torch.testing.assert_close(model(single).logits[0], ref, atol=1e-4, rtol=0)


def test_sliding_layers_within_and_beyond_the_window(pair):
    """Olmo 3's sliding layers (window 4) take the plain causal path while a sequence fits in the
    window and an explicit mask beyond it: both agree with transformers at every length."""
    hf, model, _ = pair
    ids = torch.tensor([model.tokenizer.encode(PROMPTS[0] * 3)])
    assert ids.shape[1] > 8
    with torch.no_grad():
        for n in (1, 3, 4, 5, 8, ids.shape[1]):
            torch.testing.assert_close(model(ids[:, :n]).logits, hf(ids[:, :n]).logits, atol=1e-4, rtol=0)


def test_greedy_decoding_matches_transformers(pair):
    """Batched, left-padded, KV-cached decoding gives every row transformers' greedy tokens."""
    _, model, greedy = pair
    engine = OlmoEngine(model)
    rows = [Row(engine.encode(p), Continuation(GenerateOptions.build(10**6)), p.encode()) for p in PROMPTS]
    steps = []
    with torch.inference_mode():
        logits = engine.prefill(rows, RowSampler(SamplingParams(), len(rows)))  # left-padded prefill
        for _ in range(N_GREEDY):
            tokens = logits.argmax(-1)  # never stopping at EOS, like the transformers run
            steps.append(tokens)
            logits = engine.step(tokens, tokens.tolist(), rows)
    for row, prompt in enumerate(PROMPTS):
        assert torch.stack(steps, 1)[row].tolist() == greedy[prompt]


def test_generate_counts_bytes_and_stops_at_eos(pair):
    _, model, greedy = pair
    tokenizer = model.tokenizer
    for max_new_bytes in (1, 7, N_GREEDY):
        texts = model.generate(PROMPTS, max_new_bytes=max_new_bytes)
        for prompt, text in zip(PROMPTS, texts):
            tokens = greedy[prompt]
            if tokenizer.eos_id in tokens:
                tokens = tokens[: tokens.index(tokenizer.eos_id)]
            expected = tokenizer.decode_bytes(tokens)[:max_new_bytes]
            assert text == expected.decode("utf-8", errors="replace")


def test_decode_matches_transformers_tokenizer(pair):
    from transformers import PreTrainedTokenizerFast

    _, model, greedy = pair
    reference = PreTrainedTokenizerFast.from_pretrained(model.tokenizer.directory)
    for prompt in PROMPTS:
        ids = model.tokenizer.encode(prompt)
        assert ids[1:] == reference(prompt, add_special_tokens=False)["input_ids"]
        tokens = ids + greedy[prompt]
        assert model.tokenizer.decode(tokens) == reference.decode(tokens, skip_special_tokens=True)


def test_score_is_bits_per_byte_of_transformers_logits(pair):
    hf, model, _ = pair
    results = model.score(PROMPTS, batch_size=2)
    for prompt, result in zip(PROMPTS, results):
        ids = torch.tensor([model.tokenizer.encode(prompt)])
        with torch.no_grad():
            logprobs = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1)
        nats = -logprobs.gather(-1, ids[0, 1:, None]).sum().item()
        n_bytes = len(prompt.encode("utf-8"))
        assert result.n_bytes == n_bytes == result.byte_logprobs.numel()
        assert math.isclose(result.nats, nats, rel_tol=1e-5)
        assert math.isclose(result.bits_per_byte, nats / math.log(2) / n_bytes, rel_tol=1e-5)
        assert math.isclose(-result.byte_logprobs.double().sum().item(), nats, rel_tol=1e-5)


def test_stream_stop_and_sampling(pair):
    _, model, _ = pair
    prompt = PROMPTS[0]
    full = model.generate([prompt], max_new_bytes=30)[0]
    assert "".join(model.stream(prompt, max_new_bytes=30)) == full
    stop = full[5:8]
    assert model.generate([prompt], max_new_bytes=30, stop=stop)[0] == full[: full.index(stop)]
    assert "".join(model.stream(prompt, max_new_bytes=30, stop=[stop, "\x00"])) == full[: full.index(stop)]
    # Sampling: reproducible, and row r of a batch samples as if alone with seed + r.
    kwargs = dict(max_new_bytes=12, temperature=1.0, top_k=50, top_p=0.9)
    batch = model.generate(PROMPTS, seed=7, **kwargs)
    assert batch == model.generate(PROMPTS, seed=7, **kwargs)
    assert [model.generate([p], seed=7 + r, **kwargs)[0] for r, p in enumerate(PROMPTS)] == batch
    assert model.generate(PROMPTS, max_new_bytes=0) == ["", "", ""]
    with pytest.raises(GenerationError):
        model.generate("not a list", max_new_bytes=5)
    with pytest.raises(GenerationError):
        model.generate(PROMPTS, max_new_bytes=-1)


def _config(model_type: str, **extra) -> dict:
    base = {"model_type": model_type, "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4}
    return {**base, **extra}


def test_config_accepts_transformers_bookkeeping_and_names_unknown_fields():
    config = OlmoConfig.from_dict(_config("olmo3", architectures=["Olmo3ForCausalLM"], transformers_version="4.57.6",
                                          torch_dtype="bfloat16", id2label={"0": "a"}, output_hidden_states=True))
    assert config.layer_types == ["sliding_attention", "sliding_attention"] and config.sliding_window == 4096
    assert OlmoConfig.from_dict(_config("olmo2", eos_token_id=[3, 4])).eos_token_ids == (3, 4)
    with pytest.raises(ConfigError, match="frobnicate"):
        OlmoConfig.from_dict(_config("olmo2", frobnicate=1))
    with pytest.raises(ConfigError, match="sliding_window"):
        OlmoConfig.from_dict(_config("olmo2", sliding_window=8))
    with pytest.raises(ConfigError, match="tie_word_embeddings"):
        OlmoConfig.from_dict(_config("olmo2", tie_word_embeddings=True))
    with pytest.raises(ConfigError, match="rope_type"):
        OlmoConfig.from_dict(_config("olmo3", rope_scaling={"rope_type": "longrope", "factor": 2.0}))


def test_load_reports_config_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_config("olmo2", mystery_field=True)))
    with pytest.raises(ConfigError, match="mystery_field"):
        bolmo.load(tmp_path)


_YARN = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192, "beta_fast": 32, "beta_slow": 1}


@pytest.mark.parametrize("model_type, rope_parameters, legacy", [
    ("olmo2", {"rope_theta": 500000, "rope_type": "default"}, {"rope_theta": 500000}),
    ("olmo2", {"rope_theta": 500000, **_YARN}, {"rope_theta": 500000, "rope_scaling": _YARN}),
    ("olmo3", {"full_attention": {"rope_theta": 500000, "rope_type": "default"},
               "sliding_attention": {"rope_theta": 500000, "rope_type": "default"}}, {"rope_theta": 500000}),
    ("olmo3", {"full_attention": {"rope_theta": 500000, **_YARN},
               "sliding_attention": {"rope_theta": 500000, "rope_type": "default"}},
     {"rope_theta": 500000, "rope_scaling": _YARN}),
], ids=["olmo2", "olmo2-yarn", "olmo3", "olmo3-yarn"])
def test_config_reads_transformers_5_rope_parameters(model_type, rope_parameters, legacy):
    """transformers 5 / OLMo-core 3.0 write `rope_parameters` (per layer type for Olmo 3)."""
    new = OlmoConfig.from_dict(_config(model_type, rope_parameters=rope_parameters))
    assert new == OlmoConfig.from_dict(_config(model_type, **legacy))
    assert new.transformer_spec().rope_full.theta == 500000


@pytest.mark.parametrize("extra, message", [
    ({"rope_parameters": {"full_attention": {"rope_theta": 1e4}, "sliding_attention": {"rope_theta": 5e5}}},
     "different rope_theta for full and sliding layers"),
    ({"rope_parameters": {"full_attention": {"rope_theta": 1e4}, "sliding_attention": {"rope_theta": 1e4, **_YARN}}},
     "rope_parameters.sliding_attention: only plain RoPE"),
    ({"rope_parameters": {"rope_theta": 1e4, "rope_type": "default"}, "rope_theta": 5e5},
     "rope_theta 500000.0 disagrees with rope_parameters"),
    ({"rope_parameters": "default"}, "rope_parameters: expected a non-empty object"),
])
def test_config_refuses_rope_parameters_it_cannot_honour(extra, message):
    with pytest.raises(ConfigError, match=message):
        OlmoConfig.from_dict(_config("olmo3", **extra))

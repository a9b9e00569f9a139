"""The cached generation engine (bolmo.generation with BolmoEngine) against a slow oracle and the reference's records.

The oracle (docs/architecture.md §6.3) recomputes everything with full forward passes over the whole
sequence, with the boundary mask *given*: the predictor's decisions for the prompt minus its last
byte, a forced two-way choice for that byte, then one argmax (or one draw) per step whose boundary
flag extends the mask. It shares nothing with the engine except the model's forward pass and the
per-row sampler, so agreement checks the caches, positions, roll-back and bookkeeping.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from bolmo.cli import main
from bolmo.cli.generate_commands import patch_characters
from bolmo.config import BYTE_OFFSET, PLAIN_VOCAB, BolmoConfig
from bolmo.errors import GenerationError
from bolmo.generation import generate_ids, kv_cache
from bolmo.generation.bolmo_engine import banned_special_ids, cpu_threads
from bolmo.loading import build_tokenizer
from bolmo.model.bolmo import BolmoForCausalLM
from bolmo.generation.sampling import RowSampler, SamplingParams
from conftest import load_fixture_model, read_cases

SPECIAL_IDS = [0, 2, 3, 260, 262, 263]
ORACLE_PROMPTS = ["Hello", "a", "", "Größe 大小 😀 ", "The quick brown fox jumps over the lazy dog. " * 2]


def oracle(model, prompt: str, n_new: int, params: SamplingParams = SamplingParams()) -> tuple[list[int], list[bool]]:
    """New byte ids and their boundary flags, by full recomputation (row 0 of a RowSampler)."""
    sampler = RowSampler(params, 1, model.device)
    eos = model.tokenizer.eos_id
    banned = banned_special_ids(eos)
    ids = model.tokenizer.encode(prompt)
    with torch.no_grad(), cpu_threads(model):  # small models: one thread, as the engine runs them
        if len(ids) == 1:
            mask = [True]  # BOS always ends patch 0
            sampler(torch.zeros(1, 520))  # the engine draws for the forced choice of every row
        else:
            mask = model(torch.tensor([ids])).boundary_mask[0, :-1].tolist()
            logits = model(torch.tensor([ids[:-1]]), boundary_mask=torch.tensor([mask])).logits[:, -1]
            allowed = torch.zeros(520, dtype=torch.bool)
            allowed[[ids[-1], ids[-1] + PLAIN_VOCAB]] = True
            mask.append(int(sampler(logits, banned | ~allowed)) >= PLAIN_VOCAB)
        out_ids, new_flags = [], []
        for _ in range(n_new):
            logits = model(torch.tensor([ids]), boundary_mask=torch.tensor([mask])).logits[:, -1]
            token = int(sampler(logits, banned))
            if token in (eos, eos + PLAIN_VOCAB):
                break
            ids.append(token % PLAIN_VOCAB)
            mask.append(token >= PLAIN_VOCAB)
            out_ids.append(ids[-1])
            new_flags.append(mask[-1])
    return out_ids, new_flags


def new_ids(result) -> list[int]:
    """A generation's new bytes as Bolmo byte ids."""
    return [b + BYTE_OFFSET for b in result.data]


def recorded(model, continuation: list[int]) -> tuple[list[int], str]:
    """A recorded reference continuation as (new byte ids, finish reason): the reference keeps a
    final EOS in its output, the engine reports it as the finish reason instead."""
    if continuation and continuation[-1] == model.tokenizer.eos_id:
        return continuation[:-1], "eos"
    return continuation, "length"


# ------------------------------------------------------------------------ exactness
def test_greedy_matches_reference_records(fixture_model_dir):
    model = load_fixture_model(fixture_model_dir)
    meta, cases = read_cases(fixture_model_dir)
    checked = 0
    for case in meta["generate"]:
        if "error" in case:
            continue
        assert cases[f"gen/{case['index']}/input_ids"][0].tolist() == model.tokenizer.encode(case["prompt"])
        result = generate_ids(model, [case["prompt"]], max_new_bytes=case["n_new_bytes"])[0]
        assert (new_ids(result), result.finish_reason) == recorded(model, case["continuation_ids"]), f"gen/{case['index']}"
        checked += 1
    assert checked >= 1


def test_batch_rows_equal_their_prompts_alone(fixture_model_dir):
    """Unlike the reference's left-padded batch, every row gives exactly its single-prompt
    result; the unpadded (longest) row also equals the recorded continuation."""
    model = load_fixture_model(fixture_model_dir)
    record = read_cases(fixture_model_dir)[0]["generate_batch"]
    prompts = record["prompts"]
    counts = record["n_new_bytes"] if isinstance(record["n_new_bytes"], list) else [record["n_new_bytes"]] * len(prompts)
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i].encode("utf-8")))
    n_new = counts[longest]
    together = generate_ids(model, prompts, max_new_bytes=n_new)
    for prompt, result in zip(prompts, together):
        alone = generate_ids(model, [prompt], max_new_bytes=n_new)[0]
        assert (new_ids(result), result.boundaries, result.prompt_boundaries) == (new_ids(alone), alone.boundaries,
                                                                          alone.prompt_boundaries)
    assert (new_ids(together[longest]), together[longest].finish_reason) == recorded(model, record["continuation_ids"][longest])


@pytest.mark.parametrize("prompt", ORACLE_PROMPTS, ids=["hello", "one-byte", "bos-only", "utf8", "long"])
def test_greedy_matches_slow_oracle(fixture_model_dir, prompt):
    model = load_fixture_model(fixture_model_dir)
    result = generate_ids(model, [prompt], max_new_bytes=24)[0]
    assert (new_ids(result), result.boundaries) == oracle(model, prompt, 24)
    assert len(new_ids(result)) == 24 and result.finish_reason == "length"
    assert len(result.prompt_boundaries) == len(prompt.encode())


@pytest.mark.parametrize("params", [SamplingParams(1.0, seed=5), SamplingParams(0.7, top_k=20, top_p=0.9, seed=11)],
                         ids=["t1", "t0.7-k20-p0.9"])
def test_sampling_matches_slow_oracle(tiny_model_dir, params):
    model = load_fixture_model(tiny_model_dir)
    for prompt in ("Hello", ""):
        result = generate_ids(model, [prompt], max_new_bytes=20, temperature=params.temperature,
                              top_k=params.top_k, top_p=params.top_p, seed=params.seed)[0]
        assert (new_ids(result), result.boundaries) == oracle(model, prompt, 20, params)


def test_batch_of_mixed_lengths_incl_bos_only_equals_alone(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    prompts = ["", "a", "Once upon a time, there was a byte-level model that " * 2, "xyz"]
    together = generate_ids(model, prompts, max_new_bytes=40)
    for prompt, result in zip(prompts, together):
        assert new_ids(result) == new_ids(generate_ids(model, [prompt], max_new_bytes=40)[0])


# Architecture options the fixture may not cover, built from its weights by changing config.json.
VARIANTS = {
    "lookahead0": {"boundary_predictor_lookahead": 0},
    "lookahead2-topk": {"boundary_predictor_lookahead": 2, "boundary_threshold": "topk:6"},
    "window3-yarn": {"sliding_window": 3, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                            "original_max_position_embeddings": 16}},
    "full-attention-no-expansion": {"layer_types": ["full_attention"] * 4, "add_expanded_embeddings": False},
}


def variant_model(model_dir, changes: dict) -> BolmoForCausalLM:
    data = json.loads((model_dir / "config.json").read_text())
    config = BolmoConfig.from_dict({**data, **changes})
    model = BolmoForCausalLM(config)
    weights = load_fixture_model(model_dir).state_dict()
    model.load_state_dict({name: weights[name] for name in model.state_dict()})
    model.tokenizer = build_tokenizer(config, model_dir)
    return model.eval()


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=VARIANTS.keys())
def test_architecture_variants_match_oracle_and_batch(tiny_model_dir, changes):
    model = variant_model(tiny_model_dir, changes)
    prompts = ["Hello world, hello bytes and patches", ""]
    together = generate_ids(model, prompts, max_new_bytes=16)
    for prompt, result in zip(prompts, together):
        assert (new_ids(result), result.boundaries) == oracle(model, prompt, 16)


@pytest.mark.parametrize("changes", [{}, VARIANTS["window3-yarn"]], ids=["fixture", "window3-yarn"])
def test_row_by_row_attention_matches_oracle_and_batch(tiny_model_dir, changes, monkeypatch):
    """Attention row by row over each row's own slots (what eager steps over long caches do), here
    from the first slot, full and sliding-window layers, rows of different positions."""
    monkeypatch.setattr(kv_cache, "ROW_ATTENTION_FROM", 0)
    model = variant_model(tiny_model_dir, changes)
    prompts = ["Hello world, hello bytes and patches", "", "a", "Once upon a time, "]
    together = generate_ids(model, prompts, max_new_bytes=16)
    for prompt, result in zip(prompts, together):
        assert (new_ids(result), result.boundaries) == oracle(model, prompt, 16)


# ------------------------------------------------------------------------ sampling
def test_seeds_reproduce_and_differ(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    a = model.generate(["Hello"], max_new_bytes=32, temperature=1.0, seed=1)
    assert a == model.generate(["Hello"], max_new_bytes=32, temperature=1.0, seed=1)
    assert a != model.generate(["Hello"], max_new_bytes=32, temperature=1.0, seed=2)


def test_sampled_batch_row_r_uses_seed_plus_r(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    prompts = ["Hello", "Hello", "def f(x):"]
    together = generate_ids(model, prompts, max_new_bytes=30, temperature=0.9, top_k=100, seed=7)
    for r, (prompt, result) in enumerate(zip(prompts, together)):
        assert new_ids(result) == new_ids(generate_ids(model, [prompt], max_new_bytes=30, temperature=0.9, top_k=100, seed=7 + r)[0])
    assert new_ids(together[0]) != new_ids(together[1])  # same prompt, different streams


def test_top_k_one_is_greedy(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    sampled = generate_ids(model, ["Hello"], max_new_bytes=20, temperature=1.3, top_k=1, seed=0)[0]
    assert new_ids(sampled) == new_ids(generate_ids(model, ["Hello"], max_new_bytes=20)[0])


def test_banned_ids_are_the_specials_but_eos():
    assert banned_special_ids(1).nonzero().flatten().tolist() == SPECIAL_IDS


def test_special_ids_are_never_produced(tiny_model_dir):
    """Even when the head strongly prefers them, pad/<eos>/<bpe_token_end> (and twins) never come out."""
    model = copy.deepcopy(load_fixture_model(tiny_model_dir))
    with torch.no_grad():
        model.lm_head.weight[SPECIAL_IDS] = 50.0 * model.lm_head.weight[4:260].mean(0)
    for kwargs in ({}, {"temperature": 1.5, "seed": 0}, {"temperature": 1.0, "top_p": 0.5, "seed": 1}):
        for result in generate_ids(model, ["Hello", ""], max_new_bytes=40, **kwargs):
            assert all(4 <= i < PLAIN_VOCAB for i in new_ids(result))
            assert len(new_ids(result)) == 40


def test_eos_stops_only_its_row(tiny_model_dir):
    """A head whose EOS (261) row is a scaled copy of a byte's row makes EOS win where that byte
    would have: the row ends early, without the EOS, and other rows are unaffected."""
    base = load_fixture_model(tiny_model_dir)
    first = generate_ids(base, ["Hello"], max_new_bytes=30)[0]
    trigger = new_ids(first)[5] + PLAIN_VOCAB * first.boundaries[5]
    model = copy.deepcopy(base)
    with torch.no_grad():
        model.lm_head.weight[261] = 1.01 * model.lm_head.weight[trigger]
    ended, other = generate_ids(model, ["Hello", "A longer prompt that keeps going"], max_new_bytes=30)
    assert ended.finish_reason == "eos" and len(new_ids(ended)) <= 5
    assert new_ids(ended) == new_ids(first)[: len(new_ids(ended))]
    alone = generate_ids(model, ["A longer prompt that keeps going"], max_new_bytes=30)[0]
    assert (new_ids(other), other.finish_reason) == (new_ids(alone), alone.finish_reason)


# ------------------------------------------------------------------------ stop strings, streaming, text
def _ascii_runs(data: bytes) -> list[int]:
    return [i for i in range(4, len(data) - 1) if 32 <= data[i] < 127 and 32 <= data[i + 1] < 127]


def test_stop_strings_cut_exactly_before_the_match(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    full = generate_ids(model, ["Language modeling is "], max_new_bytes=64)[0]
    starts = _ascii_runs(full.data)
    assert starts, "the fixture continuation has no two printable bytes in a row"
    i = starts[0]
    stop = full.data[i : i + 2].decode()
    first = full.data.find(stop.encode())
    result = generate_ids(model, ["Language modeling is "], max_new_bytes=64, stop=["\x00never", stop])[0]
    assert result.finish_reason == "stop"
    assert result.data == full.data[:first] and new_ids(result) == new_ids(full)[:first]
    assert model.generate(["Language modeling is "], max_new_bytes=64, stop=stop) == [full.data[:first].decode("utf-8", "replace")]
    # A stop string that only completes after max_new_bytes does not cut anything.
    assert generate_ids(model, ["Language modeling is "], max_new_bytes=first + 1, stop=stop)[0].finish_reason == "length"


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 1.0, "seed": 3}, {"stop": "__STOP__"}], ids=["greedy", "sampled", "stop"])
def test_stream_concatenates_to_generate(tiny_model_dir, kwargs):
    model = load_fixture_model(tiny_model_dir)
    prompt = "Größe 大小 😀 "
    full = generate_ids(model, [prompt], max_new_bytes=80, **kwargs)[0]
    if "stop" in kwargs:  # make the stop string one that really occurs
        starts = _ascii_runs(full.data)
        kwargs = {"stop": full.data[starts[0] : starts[0] + 2].decode()}
    pieces = list(model.stream(prompt, max_new_bytes=80, **kwargs))
    assert "".join(pieces) == model.generate([prompt], max_new_bytes=80, **kwargs)[0]
    assert all(pieces)


def test_text_is_utf8_with_replacement(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    result = generate_ids(model, ["Hello"], max_new_bytes=50)[0]
    assert result.text == result.data.decode("utf-8", errors="replace")
    assert model.generate(["Hello"], max_new_bytes=50) == [result.text]
    assert "\ufffd" in result.text  # random bytes: the fixture model's output is not valid UTF-8


def test_max_new_bytes_is_exact_and_zero_is_empty(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    assert [len(new_ids(r)) for r in generate_ids(model, ["Hi", "", "x" * 50], max_new_bytes=17)] == [17, 17, 17]
    assert model.generate(["Hi", ""], max_new_bytes=0) == ["", ""]
    assert list(model.stream("Hi", max_new_bytes=0)) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"prompts": []}, "empty"),
    ({"prompts": "Hello"}, "list"),
    ({"prompts": ["ok", 3]}, "strings"),
    ({"max_new_bytes": -1}, "max_new_bytes"),
    ({"max_new_bytes": 10**7}, "max_new_bytes"),
    ({"max_new_bytes": 2.5}, "max_new_bytes"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"stop": [""]}, "stop"),
    ({"seed": "abc"}, "seed"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_raise_generation_error(tiny_model_dir, kwargs, message):
    model = load_fixture_model(tiny_model_dir)
    args = {"prompts": ["Hello"], "max_new_bytes": 4, **kwargs}
    with pytest.raises(GenerationError, match=message):
        model.generate(args.pop("prompts"), **args)


# ------------------------------------------------------------------------ CLI
def test_cli_streams_the_continuation(tiny_model_dir, capsys):
    model = load_fixture_model(tiny_model_dir)
    assert main(["generate", "Hello", "--model", str(tiny_model_dir), "--max-new-bytes", "20"]) == 0
    assert capsys.readouterr().out == model.generate(["Hello"], max_new_bytes=20)[0] + "\n"


def test_cli_show_patches_marks_boundaries_when_not_a_terminal(tiny_model_dir, capsys):
    model = load_fixture_model(tiny_model_dir)
    assert main(["generate", "Hello world", "--model", str(tiny_model_dir), "--max-new-bytes", "12",
                 "--temperature", "0.5", "--seed", "1", "--show-patches"]) == 0
    captured = capsys.readouterr()
    result = generate_ids(model, ["Hello world"], max_new_bytes=12, temperature=0.5, seed=1)[0]
    patches = patch_characters(result.prompt + result.data, result.prompt_boundaries + result.boundaries)
    assert captured.out == "|".join("".join(char for char, _ in patch) for patch in patches) + "\n"
    assert len(patches) >= 2 and captured.out.startswith("".join(char for char, _ in patches[0]) + "|")
    assert f"in {len(patches)} patches" in captured.err


def test_patch_characters_never_split_a_character():
    # "é" is two bytes; a boundary after its first byte moves to the end of the character.
    data = "aé b".encode()
    assert [[c for c, _ in p] for p in patch_characters(data, [False, True, False, True, False])] == [["a", "é"], [" "], ["b"]]
    assert [[c for c, _ in p] for p in patch_characters(b"\xffa", [True, False])] == [["\ufffd"], ["a"]]


def test_cli_rejects_bad_arguments(tiny_model_dir, capsys):
    assert main(["generate", "Hello", "--model", str(tiny_model_dir), "--top-k", "0"]) == 2
    assert "top_k" in capsys.readouterr().err

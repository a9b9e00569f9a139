"""The fused (and optionally compiled) decode step against the model's own modules.

`bolmo.generation.fused_step` re-derives every local layer and global block from fused weights;
here the same decode runs twice from the same prefill, once through the fused step and once
through the modules' own step paths (LocalEncoder.step, KVCache.step over the blocks,
LocalDecoder.step), and the logits must agree within 1e-4 at every step. Compilation must not
change a greedy byte, and a compiler that fails must leave one notice and the eager result.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import pytest
import torch

from bolmo.config import PLAIN_VOCAB
from bolmo.generation import bolmo_engine, compiled, fused_step, kv_cache
from bolmo.generation import generate_ids
from bolmo.generation.bolmo_engine import cpu_threads, decode_step, initial_state
from bolmo.generation.bolmo_prefill import prefill_rows
from bolmo.generation.fused_step import kernels_for
from bolmo.nn.onednn import ONEDNN
from conftest import load_fixture_model

PROMPTS = ["Hello", "", "Größe 大小 😀 ", "The quick brown fox jumps over the lazy dog. " * 2]


def module_step(model, state, byte_ids, expanded, closing) -> torch.Tensor:
    """The decode step through the model's modules (no fused weights): the engine's oracle."""
    inner = model.model
    encoder, decoder = inner.local_encoder, inner.local_decoder
    h, state.encoder = encoder.step(byte_ids, expanded, state.encoder)
    if closing:
        rows = None if len(closing) == h.shape[0] else torch.tensor(closing)
        patches = encoder.out_projection(h if rows is None else h[rows]).unsqueeze(1)
        value = decoder.initial_norm(state.cache.step(patches, rows, closing)[:, 0])
        state.patch_value = value if rows is None else state.patch_value.index_copy(0, rows, value)
    y, state.decoder = decoder.step(h, state.patch_value, state.decoder)
    return model.lm_head(inner.norm(y))


STEP_VARIANTS = {  # every_row, oneDNN-packed products, row-by-row attention (eager closing rows only)
    "closing-rows-onednn-packed": (False, True, False), "closing-rows-mkl": (False, False, False),
    "every-row-onednn-packed": (True, True, False), "every-row-mkl": (True, False, False),
    "closing-rows-row-by-row-attention": (False, True, True),
}


@pytest.mark.parametrize(("every_row", "packed", "row_attention"), STEP_VARIANTS.values(), ids=STEP_VARIANTS.keys())
def test_fused_step_matches_module_step(fixture_model_dir, every_row, packed, row_attention, monkeypatch):
    model = load_fixture_model(fixture_model_dir)
    if packed and not ONEDNN:
        pytest.skip("torch has no oneDNN backend here")
    row_steps = []  # the global steps that attended row by row
    if row_attention:  # from the first slot on (the default waits for long caches)
        monkeypatch.setattr(kv_cache, "ROW_ATTENTION_FROM", 0)
        real = fused_step._row_attention
        monkeypatch.setattr(fused_step, "_row_attention", lambda *a: row_steps.append(1) or real(*a))
    kernels = kernels_for(model)
    monkeypatch.setattr(kernels, "batch_onednn", packed)  # the batch's products: oneDNN-packed or MKL
    monkeypatch.setattr(kernels, "packed", None)
    tokenizer = model.tokenizer
    histories = [tokenizer.encode(p) for p in PROMPTS]
    with torch.inference_mode(), cpu_threads(model):
        fused = initial_state(model, prefill_rows(model, histories, [None] * len(histories)), compile=False)
        fused.kernels = dataclasses.replace(fused.kernels, every_row=every_row)  # eager, either way
        assert fused.kernels.fused is kernels
        plain = initial_state(model, prefill_rows(model, histories, [None] * len(histories)), compile=False)
        # Start every row as if its last prompt id closed a patch, then follow the fused greedy path.
        tokens = [ids[-1] + PLAIN_VOCAB for ids in histories]
        for step in range(24):
            closing = [i for i, t in enumerate(tokens) if t >= PLAIN_VOCAB or step % 5 == 4]
            byte_ids = torch.tensor([t % PLAIN_VOCAB for t in tokens])
            expanded = None
            if model.config.add_expanded_embeddings:
                expanded = torch.tensor([tokenizer.expander.expand_at(h, len(h) - 1) for h in histories])
            a = decode_step(model, fused, byte_ids, expanded, closing)
            b = module_step(model, plain, byte_ids, expanded, closing)
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=lambda m: f"step {step}: {m}")
            tokens = a[:, 4:].argmax(-1).add(4).tolist()  # bytes only (special ids are masked anyway)
            for h, t in zip(histories, tokens):
                h.append(t % PLAIN_VOCAB)
    assert (kernels.packed is not None) == packed  # the packed weights served the batch
    assert bool(row_steps) == row_attention


def test_fused_weights_follow_the_model(tiny_model_dir):
    model = copy.deepcopy(load_fixture_model(tiny_model_dir))
    names = set(model.state_dict())
    first = kernels_for(model)
    assert kernels_for(model) is first  # built once while the weights are unchanged
    assert set(model.state_dict()) == names  # nothing is attached to the model
    with torch.no_grad():
        model.model.local_decoder.layers[0].xlstm.v.weight.mul_(2.0)
    rebuilt = kernels_for(model)
    assert rebuilt is not first
    dv = model.model.local_decoder.layers[0].xlstm.v.weight
    q_rows = model.model.local_decoder.layers[0].xlstm.q.weight.shape[0]
    w_in = rebuilt.decoder_layers[0].w_in  # [in, out], stored so on a CPU (more outputs than inputs)
    assert w_in.is_contiguous() and w_in.shape[0] < w_in.shape[1]
    torch.testing.assert_close(w_in.t()[2 * q_rows: 2 * q_rows + dv.shape[0]], dv)


def test_small_models_step_on_one_thread_unless_compiled(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = {}
        for name, rows, is_compiled in (("eager", 1, False), ("eager batch", 32, False), ("compiled", 1, True)):
            with cpu_threads(model, rows, is_compiled):
                seen[name] = torch.get_num_threads()
        assert seen == {"eager": 1, "eager batch": 2, "compiled": 2}
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(previous)


def test_compiled_steps_only_for_small_batches(tiny_model_dir, monkeypatch):
    model = copy.deepcopy(load_fixture_model(tiny_model_dir))
    expected = generate_ids(model, ["Hello", "Hi there", ""], max_new_bytes=6)
    calls = []

    def counting_compile(fn, **kwargs):  # stands in for torch.compile: runs eagerly, counts calls
        def run(*args):
            calls.append(fn.__name__)
            return fn(*args)
        return run

    monkeypatch.setattr(compiled.torch, "compile", counting_compile)
    monkeypatch.setenv(compiled.COMPILE_ENV, "1")
    monkeypatch.setattr(bolmo_engine, "COMPILED_ROWS", 2)
    batched = generate_ids(model, ["Hello", "Hi there", ""], max_new_bytes=6)
    assert calls == [] and [r.data for r in batched] == [r.data for r in expected]  # 3 rows: eager steps
    single = generate_ids(model, ["Hello"], max_new_bytes=6)
    assert single[0].data == expected[0].data and len(calls) == 6 and "patch_step" in calls


def test_compile_failure_falls_back_with_one_notice(tiny_model_dir, monkeypatch, caplog):
    model = copy.deepcopy(load_fixture_model(tiny_model_dir))
    expected = generate_ids(model, ["Hello there"], max_new_bytes=12)[0]

    def failing_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("C++ compiler not found\nlong details")
        return run

    monkeypatch.setattr(compiled.torch, "compile", failing_compile)
    monkeypatch.setenv(compiled.COMPILE_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="bolmo"):
        result = generate_ids(model, ["Hello there"], max_new_bytes=12)[0]
        again = generate_ids(model, ["Hello there"], max_new_bytes=12)[0]
    assert (result.data, again.data) == (expected.data, expected.data)
    notices = [r.getMessage() for r in caplog.records if r.name == "bolmo"]
    assert len(notices) == 1  # the first failure switches both compiled functions to eager for good
    assert all("C++ compiler not found" in n and "\n" not in n for n in notices)


@pytest.mark.slow
def test_compiled_step_equals_eager(tiny_model_dir, monkeypatch):
    model = load_fixture_model(tiny_model_dir)
    prompts = ["Hello", "Größe 大小 😀 naïve", ""]
    eager = generate_ids(model, prompts, max_new_bytes=40)
    monkeypatch.setenv(compiled.COMPILE_ENV, "1")
    functions = compiled.step_functions(model)
    assert functions.every_row and isinstance(functions.patch_step, compiled._CompiledOrEager)
    fast = generate_ids(model, prompts, max_new_bytes=40)
    assert [(r.data, r.boundaries) for r in fast] == [(r.data, r.boundaries) for r in eager]
    # Logits, step by step, against the eager kernels.
    with torch.inference_mode(), cpu_threads(model):
        ids = model.tokenizer.encode("Hello")
        states = [initial_state(model, prefill_rows(model, [ids], [None]), compile=c) for c in (False, True)]
        token = torch.tensor([ids[-1]])
        for _ in range(10):
            expanded = torch.tensor([model.tokenizer.expander.expand_at(ids, len(ids) - 1)])
            a, b = (decode_step(model, s, token, expanded, [0]) for s in states)
            torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
            token = a.argmax(-1) % PLAIN_VOCAB
            ids.append(int(token))


@pytest.mark.slow
def test_cli_compile_flag_decodes_the_same_bytes(capsys, monkeypatch):
    from bolmo.cli import main

    monkeypatch.delenv(compiled.COMPILE_ENV, raising=False)
    assert main(["generate", "The json module", "--max-new-bytes", "24"]) == 0
    eager = capsys.readouterr().out
    monkeypatch.setenv(compiled.COMPILE_ENV, "0")  # restored after the test; --compile overrides it
    assert main(["generate", "The json module", "--max-new-bytes", "24", "--compile"]) == 0
    assert capsys.readouterr().out == eager
    assert compiled.compile_by_default()

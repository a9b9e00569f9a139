"""Continuous batching in the generation package: rows join a running `Batch` between steps
(engine `join`, DecodeState.extend, KVCache.concat) and leave it early, and every row still
decodes exactly what it decodes alone, for Bolmo and for a subword Olmo 3 model with sliding
window layers (ring-buffer caches)."""

from __future__ import annotations

import pytest
import torch

import bolmo
from bolmo.generation import GenerateOptions, generate_ids
from bolmo.generation.batch import Batch
from bolmo.generation.continuation import Continuation
from bolmo.generation.driver import engine_for
from bolmo.generation.engine import Row
from bolmo.generation.kv_cache import KVCache
from bolmo.generation.sampling import RowSampler
from conftest import load_fixture_model
from olmo_helpers import build_hf_model, save_hf_model

PROMPTS = ["The json module", "", "def f(x):\n    return", "héllo wörld, the quick brown fox jumps",
           "import os", "A"]


@pytest.fixture(scope="module")
def olmo3(tmp_path_factory):
    return bolmo.load(save_hf_model(build_hf_model("olmo3"), tmp_path_factory.mktemp("olmo3")))


def run_schedule(model, arrivals: dict[int, list[tuple[str, int, float, int | None]]],
                 leave_at: dict[int, int] | None = None) -> list[Row]:
    """Decode with rows joining at given steps: arrivals[step] = [(prompt, max_new_bytes,
    temperature, seed)]; leave_at[step] = index (arrival order) of a row to drop then."""
    engine = engine_for(model)
    batch, rows, step = Batch(engine), [], 0
    pending, leave_at = dict(arrivals), dict(leave_at or {})
    with torch.inference_mode():
        while pending or batch.rows:
            if step in leave_at:
                batch.leave([rows[leave_at.pop(step)]])
            new, sampler = [], RowSampler(device=engine.device)
            for prompt, max_new, temperature, seed in pending.pop(step, []):
                options = GenerateOptions.build(max_new, temperature, seed=seed)
                new.append(Row(engine.encode(prompt), Continuation(options), prompt.encode()))
                sampler.add_row(options.sampling, seed)
            batch.join(new, sampler)
            rows += new
            if batch.rows:
                batch.step()
            step += 1
    return rows


def alone(model, prompt: str, max_new: int, temperature: float, seed: int | None) -> bytes:
    return generate_ids(model, [prompt], max_new, temperature, seed=seed)[0].data


SCHEDULE = {
    0: [(PROMPTS[0], 40, 0.0, None), (PROMPTS[1], 25, 0.0, None)],
    3: [(PROMPTS[2], 30, 0.0, None)],
    7: [(PROMPTS[3], 35, 0.9, 5), (PROMPTS[4], 12, 0.0, None)],
    26: [(PROMPTS[5], 20, 0.0, None)],  # after the first rows finished
    60: [(PROMPTS[0], 10, 1.0, 8)],  # into an empty batch: a fresh state
}


@pytest.mark.parametrize("which", ["tiny-gqa", "default", "olmo3"])
def test_rows_joining_a_running_batch_decode_as_alone(which, tiny_model_dir, olmo3):
    model = {"tiny-gqa": lambda: load_fixture_model(tiny_model_dir), "default": bolmo.load,
             "olmo3": lambda: olmo3}[which]()
    rows = run_schedule(model, SCHEDULE)
    expected = [alone(model, *spec) for step in sorted(SCHEDULE) for spec in SCHEDULE[step]]
    assert [bytes(r.continuation.data) for r in rows] == expected
    assert all(r.done for r in rows)


def test_a_row_that_leaves_early_changes_nothing_for_the_others(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    arrivals = {0: [(p, 30, 0.0, None) for p in PROMPTS[:4]]}
    rows = run_schedule(model, arrivals, leave_at={5: 1, 9: 3})
    assert len(rows[1].continuation.data) < 30 and not rows[1].done  # dropped mid-way
    for i in (0, 2):
        assert bytes(rows[i].continuation.data) == alone(model, PROMPTS[i], 30, 0.0, None)


def test_kv_cache_concat_keeps_every_row_and_the_ring_slots(olmo3):
    """Caches of different capacities merge at the largest; rows keep their lengths and slots."""
    stack = olmo3.model.layers
    spec = stack.spec
    caches = []
    for n_rows, length in ((2, 3), (1, 11)):
        cache = KVCache(stack, n_rows, 2 * (length + 1), "cpu", torch.float32)
        keys = [torch.randn(1, spec.n_kv_heads, length, spec.head_dim) for _ in cache.windows]
        for row in range(n_rows):
            cache.fill_row(row, keys, keys)
        caches.append((cache, keys))
    merged = KVCache.concat([c for c, _ in caches])
    assert merged.host_lengths == [3, 3, 11] and merged.lengths.tolist() == [3, 3, 11]
    assert merged.capacity == 24
    for i, window in enumerate(merged.windows):
        for row, (cache, keys), position in ((0, caches[0], 2), (2, caches[1], 10)):
            slot = position if window is None else position % window
            assert torch.equal(merged.keys[i][row, :, slot], keys[i][0, :, position])

"""Batched prefill (bolmo.generation.bolmo_prefill): right-padded groups give every row what it
gets alone, and the grouping is a partition of the rows at the least modelled cost."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bolmo.config import BoundaryThreshold
from bolmo.generation.bolmo_prefill import GROUP_POSITIONS, GROUP_ROWS, length_groups, prefill_group, prefill_rows
from conftest import load_fixture_model

# "", one byte, a multi-byte character, lengths on both sides of the mLSTM's 64-step chunks.
PROMPTS = ["", "a", "é", "Hello", "Größe 大小 😀 ", "x" * 62, "The quick brown fox jumps over the lazy dog. " * 3]


def cost(groups: list[list[int]], lengths: list[int], group_cost: int) -> int:
    return sum(group_cost + len(g) * max(lengths[i] for i in g) for g in groups)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=9), st.integers(0, 200))
def test_length_groups_partition_at_least_cost(lengths, group_cost):
    groups = length_groups(lengths, group_cost)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        kinds = {min(lengths[i], 3) for i in g}  # BOS only (1), one byte (2), longer (3)
        assert len(kinds) == 1 and (kinds != {1} or len(g) == 1)
        assert len(g) <= GROUP_ROWS and (len(g) == 1 or len(g) * max(lengths[i] for i in g) <= GROUP_POSITIONS)
    # The longer rows: no cut of their sorted order into contiguous runs costs less.
    longer = sorted((i for i, n in enumerate(lengths) if n > 2), key=lambda i: lengths[i])
    chosen = [g for g in groups if lengths[g[0]] > 2]
    assert cost(chosen, lengths, group_cost) == min(cost(runs, lengths, group_cost) for runs in every_cut(longer))


def every_cut(order: list[int]):
    """Every cut of `order` into contiguous runs (2^(n-1) of them)."""
    for r in range(len(order)):
        for cuts in itertools.combinations(range(1, len(order)), r):
            yield [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))]
    if not order:
        yield []


def test_length_groups_trade_padding_for_groups():
    lengths = [10, 11, 12, 200, 210]
    assert sorted(map(sorted, length_groups(lengths, 0))) == [[0], [1], [2], [3], [4]]  # free groups: no padding
    assert sorted(map(sorted, length_groups(lengths, 96))) == [[0, 1, 2], [3, 4]]
    assert sorted(map(sorted, length_groups(lengths, 10_000))) == [[0, 1, 2, 3, 4]]  # costly groups: one


def assert_same(together, alone, where: str) -> None:
    assert together.boundaries == alone.boundaries, where
    pairs = [("patch_value", together.patch_value, alone.patch_value)]
    if alone.logits is not None:
        pairs.append(("logits", together.logits, alone.logits))
    pairs += [(f"keys[{i}]", a, b) for i, (a, b) in enumerate(zip(together.keys, alone.keys))]
    pairs += [(f"values[{i}]", a, b) for i, (a, b) in enumerate(zip(together.values, alone.values))]
    for name in ("encoder", "decoder"):
        for i, (a, b) in enumerate(zip(getattr(together, name), getattr(alone, name))):
            pairs += [(f"{name}[{i}].{f}", getattr(a, f), getattr(b, f)) for f in ("C", "n", "m")]
    for name, a, b in pairs:
        assert a.shape == b.shape, f"{where}: {name}"
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{where}: {name}: {m}")


@pytest.mark.parametrize("threshold", [None, BoundaryThreshold("sample", 1.0)], ids=["model's", "sampled"])
def test_a_group_gives_each_row_its_own_prefill(fixture_model_dir, threshold):
    model = load_fixture_model(fixture_model_dir)
    if threshold is not None:  # drawn boundaries: each row must draw from its own generator as alone
        model = copy.deepcopy(model)
        model.model.local_encoder.boundary_predictor_module.threshold = threshold
    rows = [model.tokenizer.encode(p) for p in PROMPTS]
    longer = [ids for ids in rows if len(ids) > 2]

    def generators(n: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(7 + i) for i in range(n)]

    with torch.inference_mode():
        together = prefill_group(model, longer, generators(len(longer)))
        alone = [prefill_group(model, [ids], [g])[0] for ids, g in zip(longer, generators(len(longer)))]
        for prompt_ids, a, b in zip(longer, together, alone):
            assert_same(a, b, f"{len(prompt_ids)} ids")
        assert len({len(p.boundaries) for p in together}) > 1  # the group really was padded
        # prefill_rows: BOS-only and one-byte rows too, results in the rows' order
        everything = prefill_rows(model, rows, generators(len(rows)))
        for ids, result, g in zip(rows, everything, generators(len(rows))):
            assert_same(result, prefill_group(model, [ids], [g])[0], f"{len(ids)} ids")
    assert everything[0].logits is None and everything[0].keys == []  # BOS only: nothing to run

"""The sampling math of `bolmo.generation.sampling` against distributions worked out by hand.

Every expected distribution below is written as exact fractions in the comments and the code, not
computed with softmax. `inverse_cdf` maps a uniform u in [0, 1) to the id whose slice of the kept,
renormalised distribution (ids sorted by probability, ties by id) contains u, so the tests check the
exact id chosen just below and just above every breakpoint of the cumulative distribution.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction as F

import pytest
import torch

from bolmo.errors import GenerationError
from bolmo.generation.sampling import RowSampler, SamplingParams, inverse_cdf

# Six ids with probabilities 1/2, 1/4, 1/8, 1/16, 1/32, 1/32, placed out of id order so that the
# sort matters; ids 2 and 4 tie. Logits are log-probabilities plus a constant (softmax ignores it).
P = {3: F(1, 2), 0: F(1, 4), 5: F(1, 8), 1: F(1, 16), 2: F(1, 32), 4: F(1, 32)}
LOGITS = torch.tensor([math.log(P[i]) + 3.0 for i in range(6)])
EPS = 1e-4  # distance from a breakpoint; far below the smallest probability used (1/342)


def normalise(weights: list[tuple[int, F | float]]) -> list[tuple[int, float]]:
    total = sum(w for _, w in weights)
    return [(i, float(w / total)) for i, w in weights]


def by_hand(dist: list[tuple[int, float]], u: float) -> int:
    """The id whose cumulative slice [c_(j-1), c_j) holds u, walking the list in order."""
    cumulative = 0.0
    for i, p in dist:
        cumulative += p
        if u < cumulative:
            return i
    return dist[-1][0]


def probe_uniforms(dist: list[tuple[int, float]]) -> list[float]:
    """0, the largest float32 below 1, and EPS either side of every inner breakpoint."""
    points, cumulative = [0.0, 1.0 - 2**-24], 0.0
    for _, p in dist[:-1]:
        cumulative += p
        points += [cumulative - EPS, cumulative + EPS]
    return points


def chosen(logits: torch.Tensor, params: SamplingParams, uniforms: list[float],
           banned: torch.Tensor | None = None) -> list[int]:
    scores = logits.float().expand(len(uniforms), -1).clone()
    if banned is not None:
        scores = scores.masked_fill(banned, -math.inf)
    return inverse_cdf(scores, params, torch.tensor(uniforms)).tolist()


SORTED = [(i, P[i]) for i in (3, 0, 5, 1, 2, 4)]  # by probability, the tie 2/4 in id order

CASES = {
    # temperature 1: the distribution itself
    "t1": (SamplingParams(1.0), normalise(SORTED)),
    # temperature 1/2 squares the probabilities: 1/4, 1/16, 1/64, 1/256, 1/1024, 1/1024 (sum 342/1024)
    "t0.5": (SamplingParams(0.5), normalise([(i, p * p) for i, p in SORTED])),
    # temperature 2 takes square roots: flatter, same order
    "t2": (SamplingParams(2.0), normalise([(i, math.sqrt(p)) for i, p in SORTED])),
    # top-k 3: 1/2, 1/4, 1/8 renormalised = 4/7, 2/7, 1/7
    "k3": (SamplingParams(1.0, top_k=3), [(3, 4 / 7), (0, 2 / 7), (5, 1 / 7)]),
    # top-k 5 drops exactly one of the tied ids 2 and 4: the higher id
    "k5": (SamplingParams(1.0, top_k=5), normalise(SORTED[:5])),
    # top-p 0.7: mass before each id is 0, 1/2, 3/4, ...: ids before 3/4 stay (1/2 < 0.7), 2/3 and 1/3
    "p0.7": (SamplingParams(1.0, top_p=0.7), [(3, 2 / 3), (0, 1 / 3)]),
    # top-p 0.8: 3/4 < 0.8, so the third id stays too
    "p0.8": (SamplingParams(1.0, top_p=0.8), [(3, 4 / 7), (0, 2 / 7), (5, 1 / 7)]),
    # top-p 0.3 keeps the most likely id alone
    "p0.3": (SamplingParams(1.0, top_p=0.3), [(3, 1.0)]),
    # top-k 4 first (8/15, 4/15, 2/15, 1/15), then top-p 0.9 on that: mass before the fourth is
    # 14/15 >= 0.9, so 4/7, 2/7, 1/7 (top-p on the untruncated distribution would keep four ids)
    "k4p0.9": (SamplingParams(1.0, top_k=4, top_p=0.9), [(3, 4 / 7), (0, 2 / 7), (5, 1 / 7)]),
    # temperature 1/2 then top-k 2: 1/4 and 1/16 renormalised = 4/5, 1/5
    "t0.5k2": (SamplingParams(0.5, top_k=2), [(3, 0.8), (0, 0.2)]),
    # temperature 2 then top-p 0.5: sqrt weights 0.707, 0.5, 0.354, 0.25, 0.177, 0.177 (sum 2.164);
    # mass before the second id is 0.327 < 0.5, before the third 0.558: two ids, 0.586 and 0.414
    "t2p0.5": (SamplingParams(2.0, top_p=0.5), normalise([(3, math.sqrt(0.5)), (0, 0.5)])),
}


@pytest.mark.parametrize("name", CASES)
def test_id_chosen_at_every_breakpoint(name):
    params, dist = CASES[name]
    uniforms = probe_uniforms(dist)
    assert chosen(LOGITS, params, uniforms) == [by_hand(dist, u) for u in uniforms]


def test_truncated_ids_are_never_chosen():
    uniforms = [i / 1000 for i in range(1000)]
    assert set(chosen(LOGITS, SamplingParams(1.0, top_k=3), uniforms)) == {3, 0, 5}
    assert set(chosen(LOGITS, SamplingParams(1.0, top_p=0.7), uniforms)) == {3, 0}
    assert set(chosen(LOGITS, SamplingParams(1.0), uniforms)) == {0, 1, 2, 3, 4, 5}


def test_top_k_ties_keep_the_lower_ids():
    logits = torch.tensor([1.0, 2.0, 2.0, 0.0, 2.0])  # ids 1, 2, 4 tie for the top
    uniforms = [0.0, 0.5 - EPS, 0.5 + EPS, 1.0 - 2**-24]
    assert chosen(logits, SamplingParams(1.0, top_k=2), uniforms) == [1, 1, 2, 2]  # 1/2 each, never 4
    assert chosen(logits, SamplingParams(1.0, top_k=1), uniforms) == [1, 1, 1, 1]


def test_banned_ids_are_removed_before_truncation():
    # Banning id 3 (probability 1/2) leaves 1/4, 1/8, 1/16, 1/32, 1/32 renormalised: 1/2, 1/4, 1/8, 1/16, 1/16.
    banned = torch.zeros(6, dtype=torch.bool)
    banned[3] = True
    dist = normalise([(i, p) for i, p in SORTED if i != 3])
    uniforms = probe_uniforms(dist)
    assert chosen(LOGITS, SamplingParams(1.0), uniforms, banned) == [by_hand(dist, u) for u in uniforms]
    # With top-k 2 the two best allowed ids remain: 0 and 5, 2/3 and 1/3.
    assert chosen(LOGITS, SamplingParams(1.0, top_k=2), [2 / 3 - EPS, 2 / 3 + EPS], banned) == [0, 5]


def test_row_sampler_draws_one_uniform_per_row_from_seed_plus_row():
    """Row r of a RowSampler with seed s uses the stream of torch.Generator().manual_seed(s + r):
    rebuild those uniforms here and map them through the hand-computed CDF."""
    params, dist = CASES["t0.5"]
    rows, seed = 2000, 1234
    ids = RowSampler(dataclasses.replace(params, seed=seed), rows, torch.device("cpu"))(LOGITS.expand(rows, -1)).tolist()
    uniforms = [torch.rand(1, generator=torch.Generator().manual_seed(seed + r)).item() for r in range(rows)]
    assert ids == [by_hand(dist, u) for u in uniforms]
    # The frequencies follow the distribution (within 5 standard deviations for 2000 draws).
    for i, p in dist:
        assert abs(ids.count(i) / rows - p) <= 5 * math.sqrt(p * (1 - p) / rows) + 1 / rows, (i, p)


def test_row_sampler_keeps_each_rows_stream_when_rows_are_dropped():
    params, dist = CASES["t1"]
    sampler = RowSampler(dataclasses.replace(params, seed=7), 3, torch.device("cpu"))
    sampler(LOGITS.expand(3, -1))
    sampler.keep_rows([0, 2])
    second = sampler(LOGITS.expand(2, -1)).tolist()
    streams = [torch.Generator().manual_seed(7 + r) for r in (0, 2)]
    expected = []
    for g in streams:
        torch.rand(1, generator=g)  # the first step's draw
        expected.append(by_hand(dist, torch.rand(1, generator=g).item()))
    assert second == expected


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(0.0, top_k=2, top_p=0.1)], ids=["plain", "k-p-ignored"])
def test_greedy_takes_the_lowest_id_among_ties_and_skips_banned(params):
    sampler = RowSampler(params, 2, torch.device("cpu"))
    assert all(g is None for g in sampler.generators)  # greedy rows draw no random numbers
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [5.0, 0.0, 0.0, 5.0, 0.0]])
    assert sampler(logits).tolist() == [1, 0]
    banned = torch.tensor([False, True, False, False, False])  # one mask for every row
    assert sampler(logits, banned).tolist() == [2, 0]
    per_row = torch.tensor([[False, True, True, False, False], [True, False, False, False, False]])
    assert sampler(logits, per_row).tolist() == [4, 3]


def test_sampled_rows_respect_their_own_banned_ids_and_a_seed_reproduces():
    per_row = torch.zeros(2, 6, dtype=torch.bool)
    per_row[0, [3, 0, 5]] = True  # row 0 may only choose 1, 2 or 4
    per_row[1, :5] = True  # row 1 may only choose 5

    def draws(seed: int) -> list[list[int]]:
        sampler = RowSampler(SamplingParams(1.0, seed=seed), 2, torch.device("cpu"))
        return [sampler(LOGITS.expand(2, -1), per_row).tolist() for _ in range(50)]

    first = draws(3)
    assert {row0 for row0, _ in first} == {1, 2, 4} and {row1 for _, row1 in first} == {5}
    assert draws(3) == first and draws(4) != first


@pytest.mark.parametrize("kwargs", [{"temperature": -0.1}, {"temperature": math.inf}, {"temperature": True},
                                    {"top_k": 0}, {"top_k": 2.0}, {"top_p": 0.0}, {"top_p": 1.5},
                                    {"seed": -1}, {"seed": 2**63}])
def test_invalid_parameters_are_refused(kwargs):
    with pytest.raises(GenerationError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)


def test_a_top_p_that_rounds_to_zero_keeps_the_most_likely_id():
    """top_p = 5e-324 is 0 in float32: no id would reach it, yet one id must always stay."""
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]])
    sampler = RowSampler(SamplingParams(1.0, top_p=5e-324, seed=0), 2)
    assert sampler(logits).tolist() == [1, 0]


def test_temperatures_too_small_for_float32_are_refused():
    with pytest.raises(GenerationError, match="at least 1e-06"):
        SamplingParams(temperature=5e-324)
    assert SamplingParams(temperature=1e-6).temperature == 1e-6

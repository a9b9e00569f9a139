"""Choosing the next id from a model's logits: greedy, temperature, top-k, top-p.

Used by the one decoding loop (`bolmo.generation.driver`) for every model. `RowSampler` gives
every row of a batch its own parameters and random stream and draws one uniform number per
sampled row and step; `inverse_cdf` turns it into an id after temperature, top-k and top-p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bolmo.config import GREEDY
from bolmo.errors import GenerationError


MIN_TEMPERATURE = 1e-6  # logits / temperature must stay finite in float32


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy (argmax; ties go to the lower id, like torch.argmax), in which
    case top_k and top_p are ignored."""

    temperature: float = GREEDY
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise GenerationError(f"temperature must be a finite number >= 0, got {t!r}")
        if 0 < t < MIN_TEMPERATURE:  # dividing float32 logits by it overflows; 0 means greedy
            raise GenerationError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise GenerationError(f"top_k must be an integer >= 1, got {k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0):
            raise GenerationError(f"top_p must be in (0, 1], got {p!r}")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise GenerationError(f"seed must be an integer in [0, 2**63), got {seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class RowSampler:
    """One random stream and one set of sampling parameters per row: row r draws from its own
    generator, one uniform per sampled id. A row's sample then depends only on its own prompt,
    parameters and seed, never on the other rows or on when they stop: with
    `RowSampler(params, n, device)` row r is seeded with `seed + r`, so
    `generate(prompts, seed=s)[r] == generate([prompts[r]], seed=s + r)[0]`, and identical prompts
    in one batch still get different samples. Rows join with `add_row` (a server's new requests)
    and leave with `keep_rows`."""

    def __init__(self, params: SamplingParams | None = None, n_rows: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.params: list[SamplingParams] = []
        self.generators: list[torch.Generator | None] = []  # None for greedy rows
        if params is not None and n_rows:
            base = params.seed if params.seed is not None else random_seed()
            for row in range(n_rows):
                self.add_row(params, base + row)

    def add_row(self, params: SamplingParams, seed: int | None = None) -> None:
        """Append a row; a sampled row without a seed gets a random one."""
        self.params.append(params)
        generator = None
        if not params.greedy:
            generator = torch.Generator(self.device).manual_seed(seed if seed is not None else random_seed())
        self.generators.append(generator)

    def extend(self, other: RowSampler) -> None:
        """Append `other`'s rows (with their random streams) after these."""
        self.params += other.params
        self.generators += other.generators

    def keep_rows(self, rows: list[int]) -> None:
        self.params = [self.params[r] for r in rows]
        self.generators = [self.generators[r] for r in rows]

    def __call__(self, logits: torch.Tensor, banned: torch.Tensor | None = None) -> torch.Tensor:
        """logits [B, V] -> ids [B]. `banned` (bool [V] or [B, V], True = never choose) masks ids
        before anything else."""
        scores = logits.float()
        if banned is not None:
            scores = scores.masked_fill(banned, -math.inf)
        ids = scores.argmax(-1)
        # Rows that share their parameters are sampled together (in a plain batch: all of them).
        groups: dict[SamplingParams, list[int]] = {}
        for row, params in enumerate(self.params):
            if not params.greedy:
                groups.setdefault(params, []).append(row)
        for params, rows in groups.items():
            uniforms = torch.cat([torch.rand(1, generator=self.generators[r], device=scores.device) for r in rows])
            if len(rows) == len(self.params):
                return inverse_cdf(scores, params, uniforms)
            index = torch.tensor(rows, device=scores.device)
            ids = ids.index_copy(0, index, inverse_cdf(scores[index], params, uniforms))
        return ids


def random_seed() -> int:
    """A fresh seed for rows sampled without one (drawn from torch's global generator)."""
    return int(torch.randint(0, 2**62, ()).item())


def inverse_cdf(scores: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample over the ids sorted by score: scores [B, V] float32 (banned ids at -inf), uniforms
    [B] in [0, 1) -> ids [B]. Top-k keeps exactly k ids (ties in id order); top-p keeps the
    smallest prefix whose probability reaches p (always at least one id)."""
    sorted_scores, order = torch.sort(scores / params.temperature, dim=-1, descending=True, stable=True)
    if params.top_k is not None and params.top_k < sorted_scores.shape[-1]:
        sorted_scores[:, params.top_k :] = -math.inf
    probs = sorted_scores.softmax(-1)
    if params.top_p is not None and params.top_p < 1.0:
        mass_before = probs.cumsum(-1) - probs
        beyond = mass_before >= params.top_p
        beyond[:, 0] = False  # the most likely id always stays, even for a p that rounds to 0 in float32
        probs = probs.masked_fill(beyond, 0.0)
    cdf = probs.cumsum(-1)
    target = (uniforms * cdf[:, -1]).unsqueeze(-1)
    # The first id whose cumulative mass exceeds the target has positive probability; the clamp
    # only guards against rounding at the very top of the range.
    last_kept = (probs > 0).sum(-1, keepdim=True) - 1
    index = torch.searchsorted(cdf, target, right=True).clamp_(max=last_kept)
    return order.gather(-1, index).squeeze(-1)

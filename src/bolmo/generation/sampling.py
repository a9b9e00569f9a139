"""Choosing the next id from a model's logits: greedy, temperature, top-k, top-p.

Shared by Bolmo's byte engine (`bolmo.generation.bolmo_decode`) and subword generation (`bolmo.subword`).
`RowSampler` gives every row of a batch its own random stream and draws one uniform number per
row and step; `inverse_cdf` turns it into an id after temperature, top-k and top-p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bolmo.config import BYTE_OFFSET, FUSED_VOCAB, PLAIN_VOCAB
from bolmo.errors import GenerationError


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy (argmax; ties go to the lower id, like torch.argmax), in which
    case top_k and top_p are ignored."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise GenerationError(f"temperature must be a finite number >= 0, got {t!r}")
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


def banned_special_ids(eos_id: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [520] for Bolmo: the special ids (pad, bos, <eos>, <bpe_token_end>) and their fused
    twins, except EOS, which stays allowed and ends a row. The model must never emit the others
    as text, and the reference treats some of them as internal markers."""
    banned = torch.zeros(FUSED_VOCAB, dtype=torch.bool, device=device)
    banned[:BYTE_OFFSET] = True
    banned[PLAIN_VOCAB : PLAIN_VOCAB + BYTE_OFFSET] = True
    banned[eos_id] = banned[eos_id + PLAIN_VOCAB] = False
    return banned


class RowSampler:
    """One random stream per row: row r of a batch draws from a generator seeded with
    `seed + r`, one uniform per sampled id. A row's sample then depends only on its own prompt
    and seed, never on the other rows or on when they stop:
    `generate(prompts, seed=s)[r] == generate([prompts[r]], seed=s + r)[0]`, and identical prompts
    in one batch still get different samples. Rows are dropped with `keep_rows` as they finish."""

    def __init__(self, params: SamplingParams, n_rows: int, device: torch.device) -> None:
        self.params = params
        self.generators: list[torch.Generator] = []
        if not params.greedy:
            base = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
            self.generators = [torch.Generator(device).manual_seed(base + row) for row in range(n_rows)]

    def keep_rows(self, rows: list[int]) -> None:
        self.generators = [self.generators[r] for r in rows] if self.generators else []

    def __call__(self, logits: torch.Tensor, banned: torch.Tensor | None = None) -> torch.Tensor:
        """logits [B, V] -> ids [B]. `banned` (bool [V] or [B, V], True = never choose) masks ids
        before anything else."""
        scores = logits.float()
        if banned is not None:
            scores = scores.masked_fill(banned, -math.inf)
        if self.params.greedy:
            return scores.argmax(-1)
        uniforms = torch.cat([torch.rand(1, generator=g, device=scores.device) for g in self.generators])
        return inverse_cdf(scores, self.params, uniforms)


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
        probs = probs.masked_fill(mass_before >= params.top_p, 0.0)
    cdf = probs.cumsum(-1)
    target = (uniforms * cdf[:, -1]).unsqueeze(-1)
    # The first id whose cumulative mass exceeds the target has positive probability; the clamp
    # only guards against rounding at the very top of the range.
    last_kept = (probs > 0).sum(-1, keepdim=True) - 1
    index = torch.searchsorted(cdf, target, right=True).clamp_(max=last_kept)
    return order.gather(-1, index).squeeze(-1)

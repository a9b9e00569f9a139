"""Server settings (the `bolmo serve` options)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """Limits are in bytes, the unit of every Bolmo token count."""

    model_name: str = "bolmo"  # the id /v1/models lists and requests must name
    api_key: str | None = None  # when set, required (Bearer) on every route but /health
    max_batch: int = 32  # rows decoded together
    max_queue: int = 64  # requests waiting to join; more get 429
    max_prompt_bytes: int = 16_384
    max_tokens: int = 4096  # largest max_tokens (new bytes per choice) a request may ask for
    max_n: int = 8  # choices per prompt

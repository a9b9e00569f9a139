"""What `bolmo.load` returns: the pure model classes of `bolmo.model` plus the everyday calls
(`score`, `generate`, `stream`), which live in `bolmo.scoring` and `bolmo.generation` so that the
model layer imports neither."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from bolmo.config import DEFAULT_MAX_NEW_BYTES, GREEDY
from bolmo.generation import driver
from bolmo.model.bolmo import BolmoForCausalLM
from bolmo.model.olmo import OlmoForCausalLM
from bolmo.scoring import ScoreResult, score_texts


class InferenceMixin:
    """score / generate / stream for a model with `model.tokenizer` attached."""

    def score(self, texts: Sequence[str], batch_size: int = 8, context: int | None = None) -> list[ScoreResult]:
        """Per text: byte log-probabilities, nats and bits per byte (see bolmo.scoring; texts longer
        than the model's positions are scored in windows with `context` ids of context)."""
        return score_texts(self, texts, batch_size=batch_size, context=context)

    def generate(self, prompts: Sequence[str], max_new_bytes: int = DEFAULT_MAX_NEW_BYTES, temperature: float = GREEDY,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: str | Sequence[str] | None = None) -> list[str]:
        """Continuations of `prompts` (cached decoding, see bolmo.generation)."""
        return driver.generate(self, prompts, max_new_bytes, temperature, top_k, top_p, seed, stop)

    def stream(self, prompt: str, max_new_bytes: int = DEFAULT_MAX_NEW_BYTES, temperature: float = GREEDY,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop: str | Sequence[str] | None = None) -> Iterator[str]:
        """The continuation of `prompt` in text pieces as it is decoded."""
        return driver.stream(self, prompt, max_new_bytes, temperature, top_k, top_p, seed, stop)


class Bolmo(InferenceMixin, BolmoForCausalLM):
    """A loaded Bolmo model."""


class Olmo(InferenceMixin, OlmoForCausalLM):
    """A loaded subword OLMo 2 / Olmo 3 model."""

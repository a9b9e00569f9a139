"""How a model family turns text into ids and logits into per-position log-probabilities.

Bolmo models read bytes and fold the boundary decision into a 520-way output; subword OLMo models
read tokens with an ordinary softmax. Everything above this module (the scoring engine, tasks,
CUTE, bits per byte) is the same for both, which is what lets `bolmo eval` put a Bolmo and its
subword teacher side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bolmo.config import BYTE_OFFSET, PLAIN_VOCAB
from bolmo.errors import TokenizerError
from bolmo.scoring import folded_logprobs
from bolmo.tokenizer import ByteTokenizer, tokenizer_of


@dataclass(frozen=True)
class Scheme:
    """The id-level protocol of one model: `start` goes first, `lookahead` after the continuation
    (Bolmo's boundary predictor looks one byte ahead, so olmes' `hf_bolmo` appends two "\\n" bytes
    and runs the model on all ids but the last), `pad` fills right-padded rows."""

    start: int
    pad: int
    lookahead: tuple[int, ...]
    is_bytes: bool
    tokenizer: object

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without the start id."""
        return self.tokenizer.encode(text, add_bos=False)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.tokenizer.decode_bytes(ids)

    def logprobs(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [T, V], targets [T] -> (log p(target) [T] float32, argmax id [T]). For Bolmo the
        argmax is over bytes with both of their twins' probabilities added."""
        if self.is_bytes:
            folded = torch.logaddexp(logits[..., :PLAIN_VOCAB].float(), logits[..., PLAIN_VOCAB:].float())
            return folded_logprobs(logits, targets), folded.argmax(-1)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1), logprobs.argmax(-1)


def scheme_for(model) -> Scheme:
    """The scheme of a model returned by `bolmo.load` (Bolmo or subword OLMo)."""
    tokenizer = tokenizer_of(model)
    if isinstance(tokenizer, ByteTokenizer):
        newline = ord("\n") + BYTE_OFFSET
        return Scheme(start=tokenizer.bos_id, pad=tokenizer.pad_id, lookahead=(newline, newline), is_bytes=True,
                      tokenizer=tokenizer)
    if tokenizer.bos_id is None:
        raise TokenizerError(f"{tokenizer.directory}: the tokenizer names neither a bos nor an eos token")
    return Scheme(start=tokenizer.bos_id, pad=tokenizer.pad_id, lookahead=(), is_bytes=False, tokenizer=tokenizer)

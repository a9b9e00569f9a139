"""The interface between the one decoding loop (`bolmo.generation.driver`) and a model family.

An engine owns the device side of decoding: the batch's caches and recurrent states. The loop
owns everything on the host that is the same for every model: sampling, stop strings, byte
budgets, streaming, and which rows are still running. Bolmo (`BolmoEngine`: one byte per step,
a global step only when a patch closes) and subword OLMo models (`OlmoEngine`: one token per
step) implement it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from bolmo.generation.continuation import Continuation
from bolmo.generation.sampling import RowSampler


class Piece(NamedTuple):
    """What one sampled id adds to a row."""

    feed_id: int  # the id the model reads next (Bolmo: the plain byte id of a fused id)
    data: bytes  # the bytes it stands for
    closes: bool  # a patch (Bolmo) or token (subword) ends after its last byte


@dataclass
class Row:
    """One prompt's progress: the ids fed so far, the new bytes (`continuation`: stop strings,
    byte budget, streaming), and where patches or tokens end in prompt and continuation."""

    ids: list[int]  # model ids: the prompt's, then every fed id
    continuation: Continuation
    prompt: bytes
    prompt_boundaries: list[bool] = field(default_factory=list)  # one per prompt byte
    boundaries: list[bool] = field(default_factory=list)  # one per kept new byte
    steps: int = 0  # sampled ids so far
    closed: int = 0  # patches (tokens) the new bytes closed, counted as they come (cheap per step)

    @property
    def done(self) -> bool:
        return self.continuation.done

    def add(self, piece: Piece | None) -> None:
        """Record one sampled id (None: end of text)."""
        self.steps += 1
        if piece is None:
            self.continuation.finish("eos")
            return
        self.ids.append(piece.feed_id)
        self.continuation.add(piece.data)
        self.closed += bool(piece.data) and piece.closes
        self.boundaries += [False] * (len(piece.data) - 1) + [piece.closes] if piece.data else []
        del self.boundaries[len(self.continuation.data):]  # bytes cut by a stop string or the budget
        if not self.done and self.steps >= self.continuation.max_new_bytes:
            # Every id but a special one adds at least a byte: a row that made no progress ends here.
            self.continuation.finish("length")


class Engine(ABC):
    """Device side of decoding one batch of rows (batch row i = the i-th running row)."""

    device: torch.device

    @abstractmethod
    def encode(self, prompt: str | bytes) -> list[int]:
        """The model ids of a prompt (start id first)."""

    @abstractmethod
    def banned_ids(self) -> torch.Tensor:
        """bool [V]: ids never to sample (special ids other than end of text, vocabulary padding)."""

    @abstractmethod
    def prefill(self, rows: list[Row], sampler: RowSampler) -> torch.Tensor:
        """Run the rows' prompts, fill each row's `prompt_boundaries`, and return the logits
        [B, V] of each row's first new id."""

    @abstractmethod
    def piece(self, token: int) -> Piece | None:
        """What sampled id `token` adds (None: it ends the row)."""

    @abstractmethod
    def step(self, tokens: torch.Tensor, host_tokens: list[int], rows: list[Row]) -> torch.Tensor:
        """Feed every running row its latest sampled id (`tokens` [B] on the device, the same as a
        host list; `rows` in batch order, already updated) and return the next logits [B, V]."""

    @abstractmethod
    def keep_rows(self, keep: list[int]) -> None:
        """Keep only batch rows `keep`, in that order (the others finished)."""

    @abstractmethod
    def join(self, rows: list[Row], sampler: RowSampler) -> torch.Tensor:
        """Continuous batching: prefill `rows` (their own `sampler`, see `prefill`) and append
        them after the running rows, between two steps; return the new rows' logits [N, V]. Each
        new row then decodes exactly as it would alone."""


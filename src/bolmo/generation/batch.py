"""A running decode batch that rows join and leave between steps: the one decoding loop's state.

`driver.decode` runs one batch of prompts to the end through it; `bolmo serve` keeps one batch
running and lets requests join (`Batch.join`) and leave (`Batch.leave`, a client that went away)
between steps (continuous batching). Between calls the batch always holds the logits of every
running row's next id, so a joining row only needs its own prefill, and a leaving row is dropped
from every device state before the next step computes anything for it.
"""

from __future__ import annotations

import torch

from bolmo.errors import GenerationError
from bolmo.generation.engine import Engine, Row
from bolmo.generation.sampling import RowSampler


class Batch:
    """The running rows (batch order), their sampler, and the logits of their next ids."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.banned = engine.banned_ids()
        self.rows: list[Row] = []
        self.sampler = RowSampler(device=engine.device)
        self.logits: torch.Tensor | None = None  # [len(rows), V]

    def join(self, rows: list[Row], sampler: RowSampler) -> None:
        """Add unfinished rows, sampled by `sampler` (one row of it per new row)."""
        if not rows:
            return
        logits = self.engine.join(rows, sampler) if self.rows else self.engine.prefill(rows, sampler)
        if bool(logits.isnan().any()):  # checked once per prompt: a NaN would decode as an empty text
            raise GenerationError("the model gave NaN logits (NaN weights, or an overflow in this dtype); "
                                  "nothing generated")
        if self.rows:
            self.logits = torch.cat([self.logits, logits])
        else:  # nothing running: a fresh state
            self.logits = logits
            self.sampler = RowSampler(device=self.engine.device)
        self.sampler.extend(sampler)
        self.rows += rows

    def leave(self, rows: list[Row]) -> None:
        """Drop `rows` (finished or abandoned) from every state at once."""
        gone = {id(row) for row in rows}
        self._keep([i for i, row in enumerate(self.rows) if id(row) not in gone])

    def step(self) -> None:
        """Sample every running row's next id, add it to the row, drop the rows that finished,
        and feed the others their ids (leaving the logits of the step after)."""
        tokens = self.sampler(self.logits, self.banned)
        host_tokens = tokens.tolist()  # the one host synchronisation per step
        for row, token in zip(self.rows, host_tokens):
            row.add(self.engine.piece(token))
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        if len(keep) < len(self.rows):
            self._keep(keep)
            tokens = tokens[torch.tensor(keep, dtype=torch.long, device=tokens.device)]
            host_tokens = [host_tokens[i] for i in keep]
        if self.rows:
            self.logits = self.engine.step(tokens, host_tokens, self.rows)

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:  # the next join starts from a fresh state
            self.logits = None
            return
        self.engine.keep_rows(keep)
        self.sampler.keep_rows(keep)
        self.logits = self.logits[torch.tensor(keep, dtype=torch.long, device=self.logits.device)]

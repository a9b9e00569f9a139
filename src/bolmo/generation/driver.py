"""The one decoding loop, for Bolmo and subword OLMo models alike: `generate_ids`, `generate`,
`stream`, and `decode`, the step-by-step iterator under them.

Per step: sample every running row's next id (`RowSampler`, banned ids masked), copy the ids to
the host once, turn each into bytes (`Engine.piece`), apply the row's stop strings and byte
budget (`Continuation`), drop the rows that finished from every device state, and feed the rest
back (`Engine.step`): `batch.Batch.step`, which `bolmo serve` also drives while requests join
and leave. Rows never wait for each other and never share positions, so every row of
a batch gives exactly what its prompt gives alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from bolmo.config import DEFAULT_MAX_NEW_BYTES, GREEDY
from bolmo.errors import ContextWarning, PromptCutWarning, warn
from bolmo.generation.batch import Batch
from bolmo.generation.bolmo_engine import BolmoEngine
from bolmo.generation.continuation import Continuation, GenerateOptions, check_prompts, text_pieces
from bolmo.generation.engine import Engine, Row
from bolmo.generation.olmo_engine import OlmoEngine
from bolmo.generation.sampling import RowSampler
from bolmo.model.bolmo import BolmoForCausalLM


@dataclass
class Generation:
    """One prompt's result, in bytes. `boundaries` say, per byte, whether a patch (Bolmo) or a
    token (subword model) ends after it: for the prompt as the model cut it, and for the new bytes
    as they were generated."""

    prompt: bytes
    prompt_boundaries: list[bool]
    data: bytes  # the new bytes, without end of text and without a stop string
    boundaries: list[bool]
    finish_reason: str  # "length", "eos" or "stop"

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def engine_for(model) -> Engine:
    """The decoding engine of a loaded model (Bolmo or subword OLMo)."""
    return BolmoEngine(model) if isinstance(model, BolmoForCausalLM) else OlmoEngine(model)


def decode(model, prompts: Iterable[str | bytes], options: GenerateOptions) -> Iterator[list[Row]]:
    """Decode all prompts together: an iterator giving every row after each step (finished rows
    stay in the list, marked `done`). `generate_ids` and `stream` are this loop run to the end or
    read as it goes. The prompts are checked (and cut to the context) here, before any step."""
    prompts = check_prompts(prompts)
    engine = engine_for(model)
    rows = [Row(engine.encode(p), Continuation(options), p if isinstance(p, bytes) else p.encode("utf-8"))
            for p in prompts]
    fit_context(rows, engine, options.max_new_bytes, model.config.context_positions)
    return _Steps(engine, rows, options, model.config.context_positions)


class _Steps:
    """The steps of one `decode`. An iterator object, not a generator: each step runs under
    inference mode without leaving it on in the caller's code between steps, and one dropped half
    read needs no cleanup (a suspended generator is closed at interpreter exit, after torch's
    globals are gone)."""

    def __init__(self, engine: Engine, rows: list[Row], options: GenerateOptions, positions: int | None) -> None:
        self.engine, self.rows, self.options = engine, rows, options
        self.batch: Batch | None = None
        self.finished = False
        self.positions = positions  # the model's context; None: unknown, never warned about
        self.prompt_closed: list[int] | None = None  # patches (tokens) each prompt closed, after the prefill

    def __iter__(self) -> _Steps:
        return self

    def __next__(self) -> list[Row]:
        if self.finished:
            raise StopIteration
        with torch.inference_mode():
            if self.batch is None:
                if self.options.max_new_bytes == 0:  # the rows as they are, once
                    self.finished = True
                    return self.rows
                self.batch = Batch(self.engine)
                self.batch.join(self.rows, RowSampler(self.options.sampling, len(self.rows), self.engine.device))
            if not self.batch.rows:
                self.finished = True
                raise StopIteration
            self.batch.step()
            if self.positions is not None:
                self._warn_past_context()
        return self.rows

    def _warn_past_context(self) -> None:
        """One ContextWarning per decode when a row's patches (tokens) pass the model's positions:
        the prompt was cut to leave room (fit_context), but a long generation can still go past."""
        if self.prompt_closed is None:
            self.prompt_closed = [sum(row.prompt_boundaries) for row in self.rows]
        for i, (row, closed) in enumerate(zip(self.rows, self.prompt_closed)):
            if 1 + closed + row.closed > self.positions:  # the start id, then one position per closed patch
                warn(f"row {i} passed the model's context ({self.positions:,} positions) after "
                     f"{len(row.continuation.data):,} new bytes: what follows is generated at positions the "
                     "model was not trained on", ContextWarning)
                self.positions = None  # once per decode
                return


def fit_context(rows: list[Row], engine: Engine, max_new_bytes: int, positions: int | None) -> None:
    """Keep each prompt's last ids that fit the model's `positions` (None: unknown, nothing is
    cut) with room for the new bytes, warning about every prompt cut.

    A Bolmo patch and a subword token each hold at least one byte, so start id + prompt ids +
    new bytes bounds the positions a row can use. The room kept for new bytes is `max_new_bytes`,
    but at most half the context: a long generation never cuts a prompt below half the context
    (new positions past the trained range are the caller's choice, as in transformers)."""
    if positions is None:
        return
    reserve = min(max_new_bytes, (positions - 1) // 2)
    room = positions - 1 - reserve  # prompt ids after the start id
    for i, row in enumerate(rows):
        if len(row.ids) - 1 > room:
            total = len(row.prompt)
            kept = row.ids[len(row.ids) - room :]
            row.ids = row.ids[:1] + kept[split_character_ids(kept, engine.tokenizer) :]
            row.prompt = engine.tokenizer.decode_bytes(row.ids[1:])
            warn(PromptCutWarning(f"prompt {i} is longer than the model's context ({positions:,} positions, "
                                  f"{reserve:,} of them kept for the continuation): kept its last "
                                  f"{len(row.prompt):,} of {total:,} bytes", i))


def split_character_ids(ids: Sequence[int], tokenizer) -> int:
    """How many leading ids of a cut prompt hold only the tail of a UTF-8 character the cut split
    (continuation bytes 10xxxxxx, 3 at most): the kept prompt then starts on a whole character."""
    dropped = count = 0
    for token in ids:
        data = tokenizer.decode_bytes([token])
        if not data or dropped + len(data) > 3 or any(byte & 0xC0 != 0x80 for byte in data):
            break
        dropped += len(data)
        count += 1
    return count


def generate_ids(model, prompts: Iterable[str | bytes], max_new_bytes: int = DEFAULT_MAX_NEW_BYTES,
                 temperature: float = GREEDY, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, stop: str | Sequence[str] | None = None) -> list[Generation]:
    """Generate a continuation for every prompt (text, or raw bytes for a byte model): new bytes,
    patch or token boundaries, finish reason.

    `max_new_bytes` is exact unless end of text or a stop string comes first. With a seed, row r
    samples from its own generator seeded with `seed + r` (see `RowSampler`)."""
    options = GenerateOptions.build(max_new_bytes, temperature, top_k, top_p, seed, stop)
    for rows in decode(model, prompts, options):
        pass  # every step updates the same row objects
    return [Generation(row.prompt, row.prompt_boundaries, bytes(row.continuation.data), row.boundaries,
                       row.continuation.finish_reason or "length") for row in rows]


def generate(model, prompts: Iterable[str | bytes], max_new_bytes: int = DEFAULT_MAX_NEW_BYTES,
             temperature: float = GREEDY, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, stop: str | Sequence[str] | None = None) -> list[str]:
    """The continuations (not the prompts) as text; invalid UTF-8 becomes U+FFFD."""
    results = generate_ids(model, prompts, max_new_bytes, temperature, top_k, top_p, seed, stop)
    return [r.text for r in results]


def stream(model, prompt: str | bytes, max_new_bytes: int = DEFAULT_MAX_NEW_BYTES, temperature: float = GREEDY,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop: str | Sequence[str] | None = None) -> Iterator[str]:
    """One prompt's continuation in pieces as it is decoded. Pieces never split a UTF-8
    character, and bytes that could still turn out to start a stop string are held back, so the
    pieces concatenate to exactly what `generate` returns. Arguments are checked at the call, before
    the first piece is asked for."""
    options = GenerateOptions.build(max_new_bytes, temperature, top_k, top_p, seed, stop)
    return text_pieces(row.continuation for (row,) in decode(model, [prompt], options))

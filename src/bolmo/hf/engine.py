"""The one place where bolmo.hf calls bolmo's generation package: everything else in bolmo.hf
goes through `byte_steps`, so a new generation API is adopted here and nowhere else."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bolmo.config import GREEDY
from bolmo.generation import GenerateOptions, decode


@dataclass
class RowState:
    data: bytes | bytearray  # the new bytes so far, without EOS (the engine's buffer: read, don't keep)
    eos: bool  # the row ended at EOS


def byte_steps(core, prompts: Sequence[bytes], max_new_bytes: int, temperature: float = GREEDY,
               top_k: int | None = None, top_p: float | None = None,
               seed: int | None = None) -> Iterator[list[RowState]]:
    """Decode `prompts` (the bytes after BOS) with bolmo's cached engine, yielding every row's
    state after the prefill and after each step; every step adds one byte or EOS to each row
    still running. The caller may stop iterating at any time."""
    options = GenerateOptions.build(max_new_bytes, temperature, top_k, top_p, seed)
    yield [RowState(b"", False) for _ in prompts]  # before the first byte (decode's first yield has it)
    for rows in decode(core, [bytes(p) for p in prompts], options):
        yield [RowState(row.continuation.data, row.continuation.finish_reason == "eos") for row in rows]

"""Fast byte-level generation for Bolmo: `generate_ids`, `generate`, `stream`, and `decode`, the
step-by-step iterator under them.

How a row is decoded (docs/architecture.md §6.2):

1. Prefill: predict boundaries over the whole prompt, then roll back one byte (with lookahead the
   predictor cannot decide whether the last prompt byte ends a patch). Encoder, pooling, global
   model and decoder run over the prompt minus that byte, filling the caches.
2. The first choice is forced: "last prompt byte" or "last prompt byte, and a patch ends".
3. Every step feeds the row's last byte through one encoder step; if that byte closed a patch the
   global model steps once, at the row's own next patch position; the decoder steps with the
   latest patch value; the 520-way output is split into a byte and a boundary flag.
4. A row stops at EOS (the tokenizer's eos id, plain or fused), at a stop string (cut before it),
   or after exactly `max_new_bytes` bytes.

Rows never wait for each other and never share positions (the reference does both, and its
padded rows come out different from the same prompts alone): every row of a batch gives exactly
what its prompt gives alone. The device side lives in `bolmo.generation.bolmo_engine`; this module keeps the host
side, O(1) per row and step: one copy of the sampled ids to the host (needed anyway for the
subword expansion, EOS and stop strings), a trie walk of at most the longest vocabulary entry,
and a stop-string check of the last few bytes (`bolmo.generation.continuation`, shared with subword models).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from bolmo.config import BYTE_OFFSET, FUSED_VOCAB, PLAIN_VOCAB
from bolmo.generation.continuation import Continuation, GenerateOptions, check_prompts, text_pieces
from bolmo.generation.bolmo_engine import cpu_threads, decode_step, initial_state, prefill
from bolmo.errors import GenerationError
from bolmo.generation.sampling import RowSampler, banned_special_ids


@dataclass
class Generation:
    """One prompt's result. Ids are Bolmo byte ids (byte + 4); boundaries say whether a patch
    ends after each id (the prompt's come from the boundary predictor, except the last one,
    which the model decides)."""

    prompt_ids: list[int]
    prompt_boundaries: list[bool]
    ids: list[int]  # the new bytes, without EOS and without a stop string
    boundaries: list[bool]
    finish_reason: str  # "length", "eos" or "stop"

    @property
    def data(self) -> bytes:
        return bytes(i - BYTE_OFFSET for i in self.ids)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


class RowProgress:
    """Host-side bookkeeping of one row: its result, its continuation bytes (EOS, stop strings,
    max_new_bytes; see bolmo.generation.continuation), and the id history the subword expansion walks back
    over (never more than the longest vocabulary entry)."""

    def __init__(self, prompt_ids: list[int], options: GenerateOptions, eos_ids: tuple[int, ...]) -> None:
        self.result = Generation(prompt_ids, [], [], [], "length")
        self.history = list(prompt_ids)
        self.continuation = Continuation(options)
        self.eos_ids = eos_ids

    @property
    def done(self) -> bool:
        return self.continuation.done

    def add(self, token: int) -> None:
        """Record one sampled id from the 520-way output."""
        if token in self.eos_ids:
            self.continuation.finish("eos")
        else:
            plain = token - PLAIN_VOCAB if token >= PLAIN_VOCAB else token
            self.history.append(plain)
            self.result.ids.append(plain)
            self.result.boundaries.append(token >= PLAIN_VOCAB)
            self.continuation.add(bytes((plain - BYTE_OFFSET,)))
            kept = len(self.continuation.data)  # a stop string is cut from the ids as well
            del self.result.ids[kept:], self.result.boundaries[kept:]
        self.result.finish_reason = self.continuation.finish_reason or "length"

    def expansion(self, expander) -> int:
        """Subword id of the latest id (walks back at most the longest vocabulary entry)."""
        return expander.expand_at(self.history, len(self.history) - 1)


# ------------------------------------------------------------------------------ the loop
@torch.inference_mode()
def decode(model, prompts: Sequence[str], options: GenerateOptions) -> Iterator[list[RowProgress]]:
    """Decode all prompts together, yielding every row's progress after the prefill and after each
    step (finished rows stay in the list, marked `done`). `generate_ids` and `stream` are this
    loop run to the end or read as it goes."""
    check_prompts(prompts)
    if model.tokenizer is None:
        raise GenerationError("the model has no tokenizer: load it with bolmo.load")
    tokenizer, device = model.tokenizer, model.device
    eos = tokenizer.eos_id
    rows = [RowProgress(tokenizer.encode(p), options, (eos, eos + PLAIN_VOCAB)) for p in prompts]
    if options.max_new_bytes == 0:
        yield rows
        return
    sampler = RowSampler(options.sampling, len(rows), device)
    banned = banned_special_ids(eos, device)

    with cpu_threads(model):
        generators = sampler.generators or [None] * len(rows)
        prefills = [prefill(model, row.history, g) for row, g in zip(rows, generators)]
        state = initial_state(model, prefills)
        # The forced first choice: does the held-back last prompt id end a patch?
        last = torch.tensor([row.history[-1] for row in rows], device=device)
        allowed = torch.zeros(len(rows), FUSED_VOCAB, dtype=torch.bool, device=device)
        allowed.scatter_(1, torch.stack([last, last + PLAIN_VOCAB], 1), True)
        logits = torch.cat([p.logits if p.logits is not None else torch.zeros(1, FUSED_VOCAB, device=device)
                            for p in prefills])
        tokens = sampler(logits, banned | ~allowed)
        bos_only = torch.tensor([p.logits is None for p in prefills], device=device)
        tokens = torch.where(bos_only, last + PLAIN_VOCAB, tokens)  # a lone BOS always ends patch 0
    host_tokens = tokens.tolist()
    for row, p, token in zip(rows, prefills, host_tokens):
        row.result.prompt_boundaries = p.boundaries + [token >= PLAIN_VOCAB]
    yield rows

    expander = tokenizer.expander if model.config.add_expanded_embeddings else None
    active = list(range(len(rows)))  # rows[active[i]] is batch row i of the device state
    for _ in range(options.max_new_bytes):
        expanded = None
        if expander is not None:
            expanded = torch.tensor([rows[r].expansion(expander) for r in active], device=device)
        with cpu_threads(model):
            closing = [i for i, t in enumerate(host_tokens) if t >= PLAIN_VOCAB]
            logits = decode_step(model, state, tokens % PLAIN_VOCAB, expanded, closing)
            tokens = sampler(logits, banned)
        host_tokens = tokens.tolist()
        for r, token in zip(active, host_tokens):
            rows[r].add(token)
        yield rows
        keep = [i for i, r in enumerate(active) if not rows[r].done]
        if not keep:
            break
        if len(keep) < len(active):  # drop finished rows from every state
            index = torch.tensor(keep, device=device)
            state.keep_rows(index, keep)
            sampler.keep_rows(keep)
            tokens = tokens[index]
            host_tokens = [host_tokens[i] for i in keep]
            active = [active[i] for i in keep]


# ------------------------------------------------------------------------------ public API
def generate_ids(model, prompts: Sequence[str], max_new_bytes: int = 256, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: str | Sequence[str] | None = None) -> list[Generation]:
    """Generate a continuation for every prompt: new byte ids, patch boundaries, finish reason.

    `max_new_bytes` is exact unless EOS or a stop string comes first. With a seed, row r samples
    from its own generator seeded with `seed + r` (see bolmo.generation.sampling)."""
    options = GenerateOptions.build(max_new_bytes, temperature, top_k, top_p, seed, stop)
    for rows in decode(model, prompts, options):
        pass  # every step updates the same row objects
    return [row.result for row in rows]


def generate(model, prompts: Sequence[str], max_new_bytes: int = 256, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop: str | Sequence[str] | None = None) -> list[str]:
    """The continuations (not the prompts) as text; invalid UTF-8 becomes U+FFFD."""
    results = generate_ids(model, prompts, max_new_bytes, temperature, top_k, top_p, seed, stop)
    return [r.text for r in results]


def stream(model, prompt: str, max_new_bytes: int = 256, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop: str | Sequence[str] | None = None) -> Iterator[str]:
    """One prompt's continuation in pieces as it is decoded. Pieces never split a UTF-8
    character, and bytes that could still turn out to start a stop string are held back, so the
    pieces concatenate to exactly what `generate` returns."""
    options = GenerateOptions.build(max_new_bytes, temperature, top_k, top_p, seed, stop)
    yield from text_pieces(row.continuation for (row,) in decode(model, [prompt], options))

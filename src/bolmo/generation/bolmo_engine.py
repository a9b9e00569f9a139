"""Bolmo's decoding engine (`BolmoEngine`, driven by `bolmo.generation.driver`): the batched
decode step and the state it runs on (global KV cache, mLSTM states, latest patch values).

How a row is decoded (docs/architecture.md §6.2, docs/generation.md):

1. Prefill (`bolmo.generation.bolmo_prefill`, rows in right-padded groups of similar length):
   the prompt minus its last id fills the caches.
2. The first choice is forced: "last prompt byte" or "last prompt byte, and a patch ends".
3. Every step feeds the row's last byte through one encoder step; if that byte closed a patch the
   global model steps once, at the row's own next patch position; the decoder steps with the
   latest patch value; the 520-way output is split into a byte and a boundary flag.

Decode steps run the whole batch, each row at its own patch position.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from bolmo.config import BYTE_OFFSET, FUSED_VOCAB, PLAIN_VOCAB
from bolmo.errors import GenerationError
from bolmo.generation.compiled import StepFunctions, step_functions
from bolmo.generation.engine import Engine, Piece, Row
from bolmo.generation.bolmo_prefill import Prefill, prefill_rows
from bolmo.generation.fused_step import state_tensors
from bolmo.generation.kv_cache import KVCache
from bolmo.generation.sampling import RowSampler
from bolmo.nn.mlstm import MLSTMState

SMALL_MODEL_WIDTH = 1024  # below this hidden size, CPU decoding of small batches runs on one thread
THREADED_BATCH = 16  # from this many rows, small models use the caller's threads too
# From this many rows a compiled decoder steps eagerly: the compiled global step runs (and
# attends for) every row, the eager one only the rows that closed a patch, which wins once the
# KV cache outweighs the weights (d256, batch 32, 2,048 new bytes, two threads: 2,441 eager
# against 1,461 compiled bytes/s).
COMPILED_ROWS = 16


@contextmanager
def cpu_threads(model, rows: int = 1, compiled: bool = False) -> Iterator[None]:
    """Small models on the CPU, few rows, eager steps: one intra-op thread. Every op of such a
    step is microseconds of work, and some kernels (log_sigmoid, softmax) start a thread team
    even for a handful of elements; waking it costs more than the op, ten times more on a busy
    machine (measured on d256: eager batch 1 and 8 gain nothing from a second thread). From
    THREADED_BATCH rows the matrix products are big enough to share (batch 32: +32% with two
    threads), and larger models keep the caller's setting at any batch size. A compiled step
    is one C++ kernel with its loops split across the threads: it keeps the caller's setting
    too (d256, batch 1, two threads: 1.5-1.7x one thread)."""
    previous = torch.get_num_threads()
    single = (model.device.type == "cpu" and model.config.hidden_size < SMALL_MODEL_WIDTH and previous > 1
              and rows < THREADED_BATCH and not compiled)
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(previous)


@dataclass
class DecodeState:
    """Everything a decode step reads and writes, batch dimension first (running rows only).
    The mLSTM states are updated in place by the step kernels."""

    encoder: list[MLSTMState]
    decoder: list[MLSTMState]
    patch_value: torch.Tensor  # [B, D]
    cache: KVCache
    kernels: StepFunctions

    def functions(self, rows: int) -> StepFunctions:
        """The step functions a step of `rows` rows runs: compiled ones only below COMPILED_ROWS."""
        k = self.kernels
        return k.eager if k.compiled and rows >= COMPILED_ROWS else k

    def keep_rows(self, rows: torch.Tensor, host_rows: list[int]) -> None:
        self.encoder = [s.index_select(rows) for s in self.encoder]
        self.decoder = [s.index_select(rows) for s in self.decoder]
        self.patch_value = self.patch_value.index_select(0, rows)
        self.cache.keep_rows(rows, host_rows)

    # --- Continuous batching (bolmo serve) --------------------------------------------------------

    def extend(self, other: DecodeState) -> DecodeState:
        """This batch's rows followed by `other`'s (rows that joined between two steps)."""
        return DecodeState(
            encoder=[MLSTMState.cat([a, b]) for a, b in zip(self.encoder, other.encoder)],
            decoder=[MLSTMState.cat([a, b]) for a, b in zip(self.decoder, other.decoder)],
            patch_value=torch.cat([self.patch_value, other.patch_value]),
            cache=KVCache.concat([self.cache, other.cache]),
            kernels=self.kernels,
        )


def decode_step(model, state: DecodeState, byte_ids: torch.Tensor, expanded: torch.Tensor | None,
                closing: list[int]) -> torch.Tensor:
    """Feed each row's last byte ([B] plain ids; `closing`: the rows whose byte ends a patch) and
    return the logits [B, 520] for the next one. One call of the step function (one compiled
    graph; eager from COMPILED_ROWS rows): the global model steps inside it when a row closed a
    patch, and only those rows take the new patch value."""
    k, cache = state.functions(len(byte_ids)), state.cache
    encoder, decoder = state_tensors(state.encoder), state_tensors(state.decoder)
    if not closing:
        return k.local_step(byte_ids, expanded, encoder, decoder, state.patch_value)
    rows = None if len(closing) == len(byte_ids) else torch.tensor(closing, device=byte_ids.device)
    logits, state.patch_value = k.patch_step(byte_ids, expanded, encoder, decoder, state.patch_value,
                                             cache.step_inputs(closing, rows, k.every_row), k.every_row)
    cache.advance(closing, rows)
    return logits


def initial_state(model, prefills: list[Prefill], compile: bool | None = None) -> DecodeState:
    """Batch the rows' prefill results into one DecodeState (fresh tensors: the steps update the
    mLSTM states in place). `compile`: run the steps through torch.compile (None: the default of
    `bolmo.generation.compiled.step_functions`)."""
    cache = KVCache.from_rows(model.model.layers, [p.keys for p in prefills], [p.values for p in prefills],
                              model.device, model.dtype)
    return DecodeState(
        encoder=[MLSTMState.cat(list(states)) for states in zip(*(p.encoder for p in prefills))],
        decoder=[MLSTMState.cat(list(states)) for states in zip(*(p.decoder for p in prefills))],
        patch_value=torch.cat([p.patch_value for p in prefills]),
        cache=cache,
        kernels=step_functions(model, compile),
    )


def banned_special_ids(eos_id: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [520]: the special ids (pad, bos, <eos>, <bpe_token_end>) and their fused twins,
    except EOS, which stays allowed and ends a row. The model must never emit the others as
    text, and the reference treats some of them as internal markers."""
    banned = torch.zeros(FUSED_VOCAB, dtype=torch.bool, device=device)
    banned[:BYTE_OFFSET] = True
    banned[PLAIN_VOCAB : PLAIN_VOCAB + BYTE_OFFSET] = True
    banned[eos_id] = banned[eos_id + PLAIN_VOCAB] = False
    return banned


class BolmoEngine(Engine):
    """`Engine` for a Bolmo model: sampled ids are fused ids (byte id, + 260 when a patch ends
    after the byte); EOS (the tokenizer's eos id, plain or fused) ends a row.

    Host work per row and step is O(1): the subword expansion walks back at most the longest
    vocabulary entry over the row's ids."""

    def __init__(self, model) -> None:
        if model.tokenizer is None:
            raise GenerationError("the model has no tokenizer: load it with bolmo.load")
        self.model = model
        self.device = model.device
        self.tokenizer = model.tokenizer
        self.end_ids = (self.tokenizer.eos_id, self.tokenizer.eos_id + PLAIN_VOCAB)
        self.expander = self.tokenizer.expander if model.config.add_expanded_embeddings else None
        self.state: DecodeState | None = None

    def encode(self, prompt: str | bytes) -> list[int]:
        data = prompt if isinstance(prompt, bytes) else prompt.encode("utf-8")
        return [self.tokenizer.bos_id] + [b + BYTE_OFFSET for b in data]

    def banned_ids(self) -> torch.Tensor:
        return banned_special_ids(self.tokenizer.eos_id, self.device)

    def prefill(self, rows: list[Row], sampler: RowSampler) -> torch.Tensor:
        model, device = self.model, self.device
        # Whole prompts: products over many positions, worth the caller's threads at any length
        # (d256, two threads: 1.1x one thread at 8 bytes, 1.3-1.6x from 128).
        prefills = prefill_rows(model, [row.ids for row in rows], sampler.generators)
        with cpu_threads(model, len(rows)):
            self.state = initial_state(model, prefills)
            # The forced first choice: does the held-back last prompt id end a patch? A lone BOS
            # always ends patch 0 (its logits leave only that choice).
            last = torch.tensor([row.ids[-1] for row in rows], device=device)
            allowed = torch.zeros(len(rows), FUSED_VOCAB, dtype=torch.bool, device=device)
            allowed.scatter_(1, torch.stack([last, last + PLAIN_VOCAB], 1), True)
            only_boundary = torch.full((1, FUSED_VOCAB), -torch.inf, device=device)
            logits = torch.cat([p.logits if p.logits is not None
                                else only_boundary.index_fill(1, last[i : i + 1] + PLAIN_VOCAB, 0.0)
                                for i, p in enumerate(prefills)])
            tokens = sampler(logits, self.banned_ids() | ~allowed)
        host_tokens = tokens.tolist()
        for row, p, token in zip(rows, prefills, host_tokens):
            row.prompt_boundaries = (p.boundaries + [token >= PLAIN_VOCAB])[1:]  # BOS has no byte
        return self.step(tokens, host_tokens, rows)

    def piece(self, token: int) -> Piece | None:
        if token in self.end_ids:
            return None
        plain = token - PLAIN_VOCAB if token >= PLAIN_VOCAB else token
        return Piece(plain, bytes((plain - BYTE_OFFSET,)), token >= PLAIN_VOCAB)

    def step(self, tokens: torch.Tensor, host_tokens: list[int], rows: list[Row]) -> torch.Tensor:
        expanded = None
        if self.expander is not None:
            expanded = torch.tensor([self.expander.expand_at(row.ids, len(row.ids) - 1) for row in rows],
                                    device=self.device)
        closing = [i for i, t in enumerate(host_tokens) if t >= PLAIN_VOCAB]
        with cpu_threads(self.model, len(rows), self.state.functions(len(rows)).compiled):
            return decode_step(self.model, self.state, tokens % PLAIN_VOCAB, expanded, closing)

    def keep_rows(self, keep: list[int]) -> None:
        self.state.keep_rows(torch.tensor(keep, device=self.device), keep)

    # --- Continuous batching (bolmo serve) --------------------------------------------------------

    def join(self, rows: list[Row], sampler: RowSampler) -> torch.Tensor:
        running = self.state
        logits = self.prefill(rows, sampler)  # the new rows alone, in a fresh state
        if running is not None:
            self.state = running.extend(self.state)
        return logits


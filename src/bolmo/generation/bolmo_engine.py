"""The device side of Bolmo generation: per-row prefill, the batched decode step, and the state
they share (global KV cache, mLSTM states, latest patch values). `bolmo.generation.bolmo_decode` drives it.

Prefill runs one row at a time (exactly what the row gives alone, at the cost of one small
forward per prompt); decode steps run the whole batch, each row at its own patch position.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from bolmo.generation.compiled import StepFunctions, step_functions
from bolmo.generation.fused_step import state_tensors
from bolmo.generation.kv_cache import KVCache
from bolmo.generation.kv_cache import prefill as global_prefill
from bolmo.model.local import pool
from bolmo.nn.mlstm import MLSTMState

SMALL_MODEL_WIDTH = 1024  # below this hidden size, CPU decoding runs on one thread


@contextmanager
def cpu_threads(model) -> Iterator[None]:
    """Small models on the CPU: one intra-op thread. Every op of a decode step is microseconds of
    work, and some kernels (log_sigmoid, scaled_dot_product_attention) start a thread team even
    for a handful of elements; waking it costs more than the op, ten times more on a busy machine.
    Larger models keep the caller's setting (their matrix-vector products do gain from threads)."""
    previous = torch.get_num_threads()
    single = model.device.type == "cpu" and model.config.hidden_size < SMALL_MODEL_WIDTH and previous > 1
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(previous)


@dataclass
class Prefill:
    """One row after its prompt (minus the last byte) went through the model."""

    boundaries: list[bool]  # for the prompt ids before the last one
    encoder: list[MLSTMState]
    decoder: list[MLSTMState]
    patch_value: torch.Tensor  # [1, D]: initial_norm of the latest patch's global output
    keys: list[torch.Tensor]  # per global layer [1, KV, P, hd]
    values: list[torch.Tensor]
    logits: torch.Tensor | None  # [1, 520] predicting the last prompt id; None for a BOS-only prompt


@dataclass
class DecodeState:
    """Everything a decode step reads and writes, batch dimension first (running rows only).
    The mLSTM states are updated in place by the step kernels."""

    encoder: list[MLSTMState]
    decoder: list[MLSTMState]
    patch_value: torch.Tensor  # [B, D]
    cache: KVCache
    kernels: StepFunctions

    def keep_rows(self, rows: torch.Tensor, host_rows: list[int]) -> None:
        self.encoder = [s.index_select(rows) for s in self.encoder]
        self.decoder = [s.index_select(rows) for s in self.decoder]
        self.patch_value = self.patch_value[rows]
        self.cache.keep_rows(rows, host_rows)


def prefill(model, ids: list[int], generator: torch.Generator | None) -> Prefill:
    """Run one prompt (BOS + byte ids) through the model up to its held-back last id."""
    inner = model.model
    encoder, decoder = inner.local_encoder, inner.local_decoder
    if len(ids) == 1:  # BOS only: nothing precedes the held-back id; everything starts from zero
        zeros = [layer.xlstm.zero_state(1, model.device) for layer in (*encoder.layers, *decoder.layers)]
        n_enc = len(encoder.layers)
        patch_value = torch.zeros(1, model.config.hidden_size, device=model.device, dtype=model.dtype)
        return Prefill([], zeros[:n_enc], zeros[n_enc:], patch_value, [], [], None)
    full = torch.tensor([ids], device=model.device)
    expanded = model.expand(full)
    h, _ = encoder(full, expanded)
    predictor = encoder.boundary_predictor_module
    mask = predictor.decide(predictor.logprobs(h), None, generator)[:, :-1]
    # Roll back one byte: the held-back id is fed again by the first decode step.
    h, encoder_states = encoder(full[:, :-1], None if expanded is None else expanded[:, :-1])
    patches, _ = pool(h, mask)
    g, keys, values = global_prefill(inner.layers, encoder.out_projection(patches))
    reset = torch.zeros_like(mask)
    reset[:, 0] = True  # the reference resets the decoder's forget gate at the first real byte
    y, decoder_states = decoder(h, g, mask, reset=reset)
    logits = model.lm_head(inner.norm(y[:, -1]))
    return Prefill(mask[0].tolist(), encoder_states, decoder_states, decoder.initial_norm(g[:, -1]),
                    keys, values, logits)


def decode_step(model, state: DecodeState, byte_ids: torch.Tensor, expanded: torch.Tensor | None,
                closing: list[int]) -> torch.Tensor:
    """Feed each row's last byte ([B] plain ids; `closing`: the rows whose byte ends a patch) and
    return the logits [B, 520] for the next one."""
    k = state.kernels
    h = k.encode(byte_ids, expanded, *state_tensors(state.encoder))
    if closing:
        # Only the rows that closed a patch run the global model (on a batch: a gathered subset).
        rows = None if len(closing) == h.shape[0] else torch.tensor(closing, device=h.device)
        patches = k.fused.patch_in(h if rows is None else h[rows])
        value = k.fused.patch_value(state.cache.step(patches, rows, closing, k))
        state.patch_value = value if rows is None else state.patch_value.index_copy(0, rows, value)
    return k.decode(h, state.patch_value, *state_tensors(state.decoder))


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

"""The device side of Bolmo generation: per-row prefill, the batched decode step, and the state
they share (global KV cache, mLSTM states, latest patch values). `bolmo.generate` drives it.

Prefill runs one row at a time (exactly what the row gives alone, at the cost of one small
forward per prompt); decode steps run the whole batch, each row at its own patch position.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from bolmo.model.local import pool
from bolmo.model.transformer import OlmoBlockStack
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


class PatchKVCache:
    """Keys/values of the global layers for a batch whose rows sit at different patch positions.

    Layer l holds [B, KV, S_l, hd]. Full-attention layers store position p in slot p; sliding
    layers store it in slot p % window and never hold more than `window` slots, since a query
    sees only the last `window` positions including itself. `lengths` [B] is each row's patch
    count, i.e. the position its next patch gets; a row's slots past it are masked (they hold
    zeros or stale ring entries). Capacity grows by doubling.
    """

    def __init__(self, stack: OlmoBlockStack, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> None:
        spec = stack.spec
        self.stack = stack
        self.windows = [spec.window(i) for i in range(spec.n_layers)]
        self.dtype = dtype
        self.capacity = 0
        shape = (batch, spec.n_kv_heads, 0, spec.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.windows]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.windows]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.host_lengths = [0] * batch
        self.rope: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.reserve(capacity)

    def slots(self, layer: int) -> int:
        window = self.windows[layer]
        return self.capacity if window is None else min(window, self.capacity)

    def reserve(self, capacity: int) -> None:
        """Make room for positions < capacity (at least doubling when it has to grow)."""
        if capacity <= self.capacity:
            return
        self.capacity = max(capacity, 2 * self.capacity)
        for i in range(len(self.windows)):
            for store in (self.keys, self.values):
                old = store[i]
                if old.shape[2] < self.slots(i):
                    # Zeros, not empty: masked slots still enter the attention product, and
                    # 0 * NaN from uninitialised memory would poison the output.
                    new = old.new_zeros(*old.shape[:2], self.slots(i), old.shape[3])
                    new[:, :, : old.shape[2]] = old
                    store[i] = new
        # RoPE tables for every position the cache can hold, computed once per growth.
        positions = torch.arange(self.capacity, device=self.lengths.device).unsqueeze(0)
        tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i in range(len(self.windows)):
            rotary = self.stack.rotary(i)
            if id(rotary) not in tables:
                cos, sin = rotary.cos_sin(positions, self.dtype)
                tables[id(rotary)] = (cos[0], sin[0])
        self.rope = [tables[id(self.stack.rotary(i))] for i in range(len(self.windows))]

    def fill_row(self, row: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Store one row's prefill keys/values ([1, KV, P, hd] per layer)."""
        n = keys[0].shape[2] if keys else 0
        for i, window in enumerate(self.windows):
            positions = torch.arange(max(0, n - self.slots(i)), n, device=self.lengths.device)
            slots = positions if window is None else positions % window
            self.keys[i][row, :, slots] = keys[i][0, :, positions]
            self.values[i][row, :, slots] = values[i][0, :, positions]
        self.lengths[row] = n
        self.host_lengths[row] = n

    def step(self, x: torch.Tensor, rows: torch.Tensor | None, host_rows: list[int]) -> torch.Tensor:
        """Append one patch for each of `rows` (batch row indices, None = every row; `host_rows`
        the same as a list), each at its row's own next position: x [R, 1, D] -> global output
        [R, 1, D]. The other rows are not computed at all."""
        needed = max(self.host_lengths[r] for r in host_rows) + 1
        self.reserve(needed)
        pos = self.lengths if rows is None else self.lengths[rows]
        write_rows = torch.arange(len(host_rows), device=pos.device) if rows is None else rows
        # Slots and masks per window size, RoPE rows per table: shared by layers of one kind.
        per_window: dict[int | None, tuple[torch.Tensor, int, torch.Tensor]] = {}
        per_table: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, block in enumerate(self.stack):
            window = self.windows[i]
            if window not in per_window:
                n = needed if window is None else min(window, needed)
                visible = torch.arange(n, device=pos.device) <= pos.unsqueeze(1)  # [R, n]
                per_window[window] = (pos if window is None else pos % window, n, visible[:, None, None, :])
            slot, n, mask = per_window[window]
            cos, sin = self.rope[i]
            if id(cos) not in per_table:
                per_table[id(cos)] = (cos[pos].unsqueeze(1), sin[pos].unsqueeze(1))  # [R, 1, hd]
            q, k, v = block.self_attn.project(x, *per_table[id(cos)])
            self.keys[i][write_rows, :, slot] = k[:, :, 0]
            self.values[i][write_rows, :, slot] = v[:, :, 0]
            keys, values = self.keys[i][:, :, :n], self.values[i][:, :, :n]
            if rows is not None:  # a gather: only the rows that closed a patch attend
                keys, values = keys[rows], values[rows]
            x = block.finish(x, block.self_attn.attend(q, keys, values, mask))
        self.lengths[write_rows] += 1
        for r in host_rows:
            self.host_lengths[r] += 1
        return x

    def keep_rows(self, rows: torch.Tensor, host_rows: list[int]) -> None:
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.lengths = self.lengths[rows]
        self.host_lengths = [self.host_lengths[r] for r in host_rows]


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
    """Everything a decode step reads and writes, batch dimension first (running rows only)."""

    encoder: list[MLSTMState]
    decoder: list[MLSTMState]
    patch_value: torch.Tensor  # [B, D]
    cache: PatchKVCache

    def keep_rows(self, rows: torch.Tensor, host_rows: list[int]) -> None:
        self.encoder = [s.index_select(rows) for s in self.encoder]
        self.decoder = [s.index_select(rows) for s in self.decoder]
        self.patch_value = self.patch_value[rows]
        self.cache.keep_rows(rows, host_rows)


def prefill(model, ids: list[int], generator: torch.Generator | None) -> Prefill:
    """Run one prompt (BOS + byte ids) through the model up to its held-back last id."""
    inner = model.model
    encoder, decoder, stack = inner.local_encoder, inner.local_decoder, inner.layers
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
    g, keys, values = _global_prefill(stack, encoder.out_projection(patches))
    reset = torch.zeros_like(mask)
    reset[:, 0] = True  # the reference resets the decoder's forget gate at the first real byte
    y, decoder_states = decoder(h, g, mask, reset=reset)
    logits = model.lm_head(inner.norm(y[:, -1]))
    return Prefill(mask[0].tolist(), encoder_states, decoder_states, decoder.initial_norm(g[:, -1]),
                    keys, values, logits)


def _global_prefill(stack: OlmoBlockStack, x: torch.Tensor
                    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The global layers over one row's P patches [1, P, D], keeping every layer's keys/values."""
    positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    keys, values = [], []
    for block, inputs in zip(stack, stack.layer_inputs(positions, None, x.dtype)):
        q, k, v = block.self_attn.project(x, inputs.cos, inputs.sin)
        keys.append(k)
        values.append(v)
        x = block.finish(x, block.self_attn.attend(q, k, v, inputs.mask))
    return x, keys, values


def decode_step(model, state: DecodeState, byte_ids: torch.Tensor, expanded: torch.Tensor | None,
                closing: list[int]) -> torch.Tensor:
    """Feed each row's last byte ([B] plain ids; `closing`: the rows whose byte ends a patch) and
    return the logits [B, 520] for the next one."""
    inner = model.model
    encoder, decoder = inner.local_encoder, inner.local_decoder
    h, state.encoder = encoder.step(byte_ids, expanded, state.encoder)
    if closing:
        # Only the rows that closed a patch run the global model (on a batch: a gathered subset).
        rows = None if len(closing) == h.shape[0] else torch.tensor(closing, device=h.device)
        patches = encoder.out_projection(h if rows is None else h[rows]).unsqueeze(1)
        value = decoder.initial_norm(state.cache.step(patches, rows, closing)[:, 0])
        state.patch_value = value if rows is None else state.patch_value.index_copy(0, rows, value)
    y, state.decoder = decoder.step(h, state.patch_value, state.decoder)
    return model.lm_head(inner.norm(y))


def initial_state(model, prefills: list[Prefill]) -> DecodeState:
    """Batch the rows' prefill results into one DecodeState."""
    most_patches = max(p.keys[0].shape[2] if p.keys else 0 for p in prefills)
    cache = PatchKVCache(model.model.layers, len(prefills), 2 * (most_patches + 1), model.device, model.dtype)
    for row, p in enumerate(prefills):
        if p.keys:
            cache.fill_row(row, p.keys, p.values)
    return DecodeState(
        encoder=[MLSTMState.cat(list(states)) for states in zip(*(p.encoder for p in prefills))],
        decoder=[MLSTMState.cat(list(states)) for states in zip(*(p.decoder for p in prefills))],
        patch_value=torch.cat([p.patch_value for p in prefills]),
        cache=cache,
    )

"""The key/value cache of an `OlmoBlockStack` for incremental decoding, shared by Bolmo's global
model (`bolmo.generation.bolmo_engine`, one position per patch) and subword OLMo models
(`bolmo.generation.olmo_engine`, one position per token).

`prefill` runs whole prompts and hands back every layer's keys/values; `KVCache.from_rows` stores
them row by row, and `KVCache.step` then adds one position to each row, at that row's own next
position, through the blocks' own modules (subword decoding, and the tests' oracle). Bolmo's fused
step reads the cache through `step_inputs` and moves it on with `advance`
(bolmo.generation.fused_step.StepKernels.global_step). Rows never share positions, so a
left-padded prompt decodes as it would alone and a row can run ahead of the others (Bolmo rows
close patches at different bytes).
"""

from __future__ import annotations

import torch

from bolmo.generation.fused_step import GlobalCache
from bolmo.model.transformer import OlmoBlockStack

ATTENTION_BLOCK = 64  # the fused global step attends over a multiple of this many cache slots
# From this many slots an eager fused step on a CPU attends row by row over each row's own slots
# instead of gathering the rows and attending over the longest (d256, two threads, per layer, 16 of
# 32 rows: 0.55 against 0.57 ms over 192 slots, 0.9 against 1.5 ms over 448, 1.8 against 4.4 ms over
# 1,024). Not on a GPU, where a gather is one fast copy and every row's operations one more launch.
ROW_ATTENTION_FROM = 192


def prefill(stack: OlmoBlockStack, x: torch.Tensor, positions: torch.Tensor | None = None,
            valid: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The blocks over whole prompts x [B, T, D] (position ids [B, T], default 0..T-1; `valid`
    [B, T] False on padding), keeping every layer's keys/values [B, KV, T, hd] for the cache."""
    if positions is None:
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    keys, values = [], []
    for block, inputs in zip(stack, stack.layer_inputs(positions, valid, x.dtype)):
        q, k, v = block.self_attn.project(x, inputs.cos, inputs.sin)
        keys.append(k)
        values.append(v)
        x = block.finish(x, block.self_attn.attend(q, k, v, inputs.mask))
    return x, keys, values


class KVCache:
    """Keys/values for a batch whose rows sit at different positions.

    Layer l holds [B, KV, S_l, hd]. Full-attention layers store position p in slot p; sliding
    layers store it in slot p % window, a ring of `window` slots: the window-1 earlier positions
    the next query sees plus the slot its own key is written to before attending (writing first
    keeps a step free of concatenation). `lengths` [B] is each row's position count, i.e. the
    position its next entry gets; a row's slots past it are masked. `host_lengths` mirrors it on
    the host so that a step never waits for the device. Capacity grows by doubling.
    """

    def __init__(self, stack: OlmoBlockStack, batch: int, capacity: int, device: torch.device | str,
                 dtype: torch.dtype) -> None:
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

    @classmethod
    def from_rows(cls, stack: OlmoBlockStack, keys: list[list[torch.Tensor]], values: list[list[torch.Tensor]],
                  device: torch.device | str, dtype: torch.dtype) -> KVCache:
        """A cache holding each row's prefill: keys[row][layer] [1, KV, P_row, hd] for positions
        0..P_row-1 (an empty list for a row with none), room for twice the longest row."""
        longest = max((k[0].shape[2] for k in keys if k), default=0)
        cache = cls(stack, len(keys), 2 * (longest + 1), device, dtype)
        for row, (k, v) in enumerate(zip(keys, values)):
            if k:
                cache.fill_row(row, k, v)
        return cache

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
        """Store one row's prefill keys/values ([1, KV, P, hd] per layer, positions 0..P-1; P within
        the capacity)."""
        n = keys[0].shape[2]
        for i, window in enumerate(self.windows):
            positions = torch.arange(max(0, n - self.slots(i)), n, device=self.lengths.device)
            slots = positions if window is None else positions % window
            self.keys[i][row, :, slots] = keys[i][0, :, positions]
            self.values[i][row, :, slots] = values[i][0, :, positions]
        self.lengths[row] = n
        self.host_lengths[row] = n

    def step(self, x: torch.Tensor, rows: torch.Tensor | None, host_rows: list[int]) -> torch.Tensor:
        """Append one position for each of `rows` (batch row indices, None = every row; `host_rows`
        the same as a list), each at its row's own next position: x [R, 1, D] -> the blocks'
        output [R, 1, D]. The other rows are not computed at all."""
        needed = max(self.host_lengths[r] for r in host_rows) + 1
        self.reserve(needed)
        pos = self.lengths if rows is None else self.lengths.index_select(0, rows)
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
            if rows is not None:  # a gather: only the rows that take a step attend
                keys, values = keys.index_select(0, rows), values.index_select(0, rows)
            x = block.finish(x, block.self_attn.attend(q, keys, values, mask))
        self.lengths[write_rows] += 1
        for r in host_rows:
            self.host_lengths[r] += 1
        return x

    def step_inputs(self, host_rows: list[int], rows: torch.Tensor | None, every_row: bool) -> GlobalCache:
        """What the fused global step (StepKernels.global_step) reads for a step of the rows in
        `host_rows` (`rows`: the same on the device, None when every row steps), making room
        for their new positions first. Call `advance` after the step.

        Attention reads the slots up to the longest position among the rows it computes (every
        row with `every_row`), rounded up to a multiple of ATTENTION_BLOCK (the keys and values
        handed over are views of those slots), so that a compiled step sees a new shape only
        every that many patches: at batch 32 the cache, not the weights, is most of what a step
        reads."""
        computed = self.host_lengths if rows is None or every_row else [self.host_lengths[r] for r in host_rows]
        needed = max(computed) + 1
        self.reserve(needed)
        visible = -(-needed // ATTENTION_BLOCK) * ATTENTION_BLOCK
        # Views of the first slots: every slot a step writes lies below `needed` (a sliding
        # layer's ring slot below its window), so writes through them land in the cache.
        views = [(k[:, :, :visible], v[:, :, :visible]) for k, v in zip(self.keys, self.values)]
        spans = None
        if not every_row and visible >= ROW_ATTENTION_FROM and self.lengths.device.type == "cpu":
            spans = [(r, self.host_lengths[r]) for r in host_rows]
        return GlobalCache([k for k, _ in views], [v for _, v in views], self.rope, self.lengths, rows, spans)

    def advance(self, host_rows: list[int], rows: torch.Tensor | None) -> None:
        """The rows in `host_rows` (`rows` on the device, None for every row) took a step."""
        if rows is None:
            self.lengths += 1
        else:
            self.lengths[rows] += 1
        for r in host_rows:
            self.host_lengths[r] += 1

    def keep_rows(self, rows: torch.Tensor, host_rows: list[int]) -> None:
        """Keep only `rows` (the same as a host list in `host_rows`), in that order."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.lengths = self.lengths.index_select(0, rows)
        self.host_lengths = [self.host_lengths[r] for r in host_rows]

    # --- Continuous batching (bolmo serve): rows joining a running batch -------------------------

    @classmethod
    def concat(cls, caches: list[KVCache]) -> KVCache:
        """One cache holding the rows of `caches` in order (same stack), at the largest capacity.

        Every source's slots go to the same slot indices: a full layer keeps position p in slot p,
        and a sliding layer whose source held fewer than `window` slots only ever wrote positions
        below its capacity, where p % window == p; a source at full window size matches exactly."""
        first = caches[0]
        merged = cls(first.stack, sum(len(c.host_lengths) for c in caches), max(c.capacity for c in caches),
                     first.lengths.device, first.dtype)
        start = 0
        for cache in caches:
            rows = slice(start, start + len(cache.host_lengths))
            for i in range(len(merged.windows)):
                n = cache.keys[i].shape[2]
                merged.keys[i][rows, :, :n] = cache.keys[i]
                merged.values[i][rows, :, :n] = cache.values[i]
            merged.lengths[rows] = cache.lengths
            start = rows.stop
        merged.host_lengths = [n for cache in caches for n in cache.host_lengths]
        return merged


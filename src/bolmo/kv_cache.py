"""A key/value cache for `OlmoBlockStack`, and the cached forward pass that fills and reads it.

Used by any decoder that runs the OLMo transformer incrementally: prefill the prompt once, then
one new position per step. Keys and values are preallocated for `capacity` positions, so a step
writes in place instead of concatenating. Every cached position keeps its own position id and a
validity flag, which is what makes left-padded batches exact: padding never becomes visible to a
real query, and each row's positions start at 0 at its first real token.

Sliding-window layers keep all their keys as well (the mask hides old ones); a ring buffer would
save memory for very long generations, which this simple cache does not attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bolmo.config import TransformerSpec
from bolmo.model.transformer import OlmoBlockStack
from bolmo.nn.attention import causal_mask


@dataclass
class KVCache:
    keys: list[torch.Tensor]  # per layer [B, KV, capacity, hd]
    values: list[torch.Tensor]  # per layer [B, KV, capacity, hd]
    positions: torch.Tensor  # [B, capacity] long: position id of each cached entry
    valid: torch.Tensor  # [B, capacity] bool: False for padding
    length: int = 0  # entries filled so far

    @classmethod
    def empty(cls, spec: TransformerSpec, batch: int, capacity: int, device: torch.device | str,
              dtype: torch.dtype) -> "KVCache":
        shape = (batch, spec.n_kv_heads, capacity, spec.head_dim)
        return cls(
            keys=[torch.empty(shape, device=device, dtype=dtype) for _ in range(spec.n_layers)],
            values=[torch.empty(shape, device=device, dtype=dtype) for _ in range(spec.n_layers)],
            positions=torch.zeros(batch, capacity, dtype=torch.long, device=device),
            valid=torch.zeros(batch, capacity, dtype=torch.bool, device=device),
        )

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]


def forward_cached(stack: OlmoBlockStack, x: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                   cache: KVCache) -> torch.Tensor:
    """Run the blocks on new positions x [B, T, D] (position ids [B, T], validity [B, T]) attending
    to everything cached before them plus themselves; appends their keys and values to `cache`."""
    start, end = cache.length, cache.length + x.shape[1]
    if end > cache.capacity:
        raise ValueError(f"KV cache full: {end} positions needed, capacity {cache.capacity}")
    cache.positions[:, start:end] = positions
    cache.valid[:, start:end] = valid
    key_positions, key_valid = cache.positions[:, :end], cache.valid[:, :end]
    tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    masks: dict[int | None, torch.Tensor] = {}
    for i, block in enumerate(stack):
        rotary = stack.rotary(i)
        if id(rotary) not in tables:
            tables[id(rotary)] = rotary.cos_sin(positions, x.dtype)
        window = stack.spec.window(i)
        if window not in masks:
            masks[window] = causal_mask(positions, key_positions, key_valid, window)
        attn = block.self_attn
        q, k, v = attn.project(x, *tables[id(rotary)])
        cache.keys[i][:, :, start:end] = k
        cache.values[i][:, :, start:end] = v
        out = attn.attend(q, cache.keys[i][:, :, :end], cache.values[i][:, :, :end], masks[window])
        # The two post-norm residual steps of OlmoBlock.forward, with cached attention.
        x = x + block.post_attention_layernorm(out)
        x = x + block.post_feedforward_layernorm(block.mlp(x))
    cache.length = end
    return x

"""The OLMo 2 / Olmo 3 transformer: Bolmo's global model, and (with embeddings and a head) a
subword language model.

Blocks are post-norm ("reordered norm"): the norm is applied to each sublayer's output before it
is added to the raw residual, and there is no input norm. Layers alternate between sliding-window
attention (plain RoPE) and full attention (RoPE scaling such as YaRN) as `layer_types` says.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bolmo.config import TransformerSpec
from bolmo.nn.attention import Attention, causal_mask
from bolmo.nn.mlp import SwiGLU
from bolmo.nn.norm import RMSNorm
from bolmo.nn.rope import Rotary


class OlmoBlock(nn.Module):
    def __init__(self, spec: TransformerSpec) -> None:
        super().__init__()
        self.self_attn = Attention(spec.d_model, spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.rms_norm_eps)
        self.mlp = SwiGLU(spec.d_model, spec.intermediate_size)
        self.post_attention_layernorm = RMSNorm(spec.d_model, spec.rms_norm_eps)
        self.post_feedforward_layernorm = RMSNorm(spec.d_model, spec.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.finish(x, self.self_attn(x, cos, sin, mask))

    def finish(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The block after attention (both post-norm residual steps); separate so a decoding
        engine can run attention against its own KV cache."""
        x = x + self.post_attention_layernorm(attn_out)
        return x + self.post_feedforward_layernorm(self.mlp(x))


@dataclass
class LayerInputs:
    """Per-layer RoPE tables and attention mask, shared by all layers of the same kind."""

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None


class OlmoBlockStack(nn.ModuleList):
    """The block list (state-dict names `layers.{i}.*`) plus what the blocks share: RoPE tables
    for sliding and full layers, and masks built once per call."""

    def __init__(self, spec: TransformerSpec) -> None:
        super().__init__(OlmoBlock(spec) for _ in range(spec.n_layers))
        self.spec = spec
        self.rotary_full = Rotary(spec.rope_full, spec.head_dim)
        self.rotary_sliding = Rotary(spec.rope_sliding, spec.head_dim)

    def rotary(self, layer: int) -> Rotary:
        return self.rotary_sliding if self.spec.layer_types[layer] == "sliding_attention" else self.rotary_full

    def layer_inputs(self, positions: torch.Tensor, valid: torch.Tensor | None, dtype: torch.dtype) -> list[LayerInputs]:
        """positions [B, T]; valid [B, T] bool (False = padding) or None."""
        tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        masks: dict[int | None, torch.Tensor | None] = {}
        # A sliding window wider than the span of the positions hides nothing: such layers take
        # SDPA's causal path too (a [T, T] mask costs its construction plus a kernel that cannot
        # skip the upper triangle: a quarter of a forward over 8,000 bytes on a CPU).
        span = int(positions.max() - positions.min()) + 1 if positions.numel() else 0
        out = []
        for i in range(len(self)):
            rotary = self.rotary(i)
            if id(rotary) not in tables:
                tables[id(rotary)] = rotary.cos_sin(positions, dtype)
            window = self.spec.window(i)
            if window not in masks:
                plain_causal = (window is None or window >= span) and valid is None
                masks[window] = None if plain_causal else causal_mask(positions, positions, valid, window)
            out.append(LayerInputs(*tables[id(rotary)], masks[window]))
        return out

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]. Rows may be right-padded (`valid` False on padding)."""
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        for block, inputs in zip(self, self.layer_inputs(positions, valid, x.dtype)):
            x = block(x, inputs.cos, inputs.sin, inputs.mask)
        return x

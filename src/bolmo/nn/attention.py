"""Causal self-attention of OLMo 2 / Olmo 3: QK-norm over the whole projection, RoPE, GQA.

Split into `project` (q, k, v after norm and RoPE) and `attend` so a decoding engine can put keys
and values into its own cache between the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bolmo.nn.norm import RMSNorm
from bolmo.nn.onednn import Linear
from bolmo.nn.rope import apply_rotary


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = Linear(n_heads * head_dim, d_model, bias=False)
        # QK-norm acts on the full projected vector, before the split into heads (OLMo 2 style).
        self.q_norm = RMSNorm(n_heads * head_dim, eps)
        self.k_norm = RMSNorm(n_kv_heads * head_dim, eps)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, D] -> q [B, H, T, hd], k and v [B, KV, T, hd] (q and k rotated)."""
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x)).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_norm(self.k_proj(x)).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q [B, H, T, hd], k/v [B, KV, S, hd], mask bool [B, 1, T, S] (True = visible) or None for
        plain causal attention with T == S. Returns o_proj(attention) [B, T, D]."""
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=self.n_heads != self.n_kv_heads
        )
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.attend(*self.project(x, cos, sin), mask)


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, k_valid: torch.Tensor | None, window: int | None) -> torch.Tensor:
    """Which keys each query sees: bool [B, 1, T, S].

    q_pos [B, T] and k_pos [B, S] are positions; a key is visible if it is not in the future, is
    valid, and (sliding layers) lies within `window` positions including the query itself. A
    query always sees a key at its own position, so rows of padding never become all-masked
    (SDPA would return NaN for them).
    """
    diff = q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)  # [B, T, S]
    visible = diff >= 0
    if window is not None:
        visible &= diff < window
    if k_valid is not None:
        visible &= k_valid.unsqueeze(-2)
        visible |= diff == 0
    return visible.unsqueeze(1)

"""RMSNorm with float32 statistics (every Bolmo norm except the mLSTM's multi-head LayerNorm)."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """weight * x / sqrt(mean(x^2) + eps), reduced in float32, weight applied before casting back
    (the order OLMo 2 uses; it matters for bfloat16 parity)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * normed).to(x.dtype)

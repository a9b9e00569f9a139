"""SwiGLU feed-forward block, shared by the global transformer and the local layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bolmo.nn.onednn import Linear


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); HF names gate_proj / up_proj / down_proj, no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = Linear(dim, hidden, bias=False)
        self.up_proj = Linear(dim, hidden, bias=False)
        self.down_proj = Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

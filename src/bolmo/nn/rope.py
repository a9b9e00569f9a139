"""Rotary position embeddings: plain, linear and YaRN inverse frequencies, rotate-half layout.

Frequencies follow transformers' definitions exactly (the released checkpoints were run with it):
`inv_freq_j = 1 / theta^(2j/hd)` in float32, YaRN blending interpolated and extrapolated
frequencies over a linear ramp and scaling cos/sin by an attention factor.
"""

from __future__ import annotations

import math

import torch

from bolmo.config import RopeSpec


def inverse_frequencies(spec: RopeSpec, head_dim: int) -> tuple[torch.Tensor, float]:
    """(inv_freq [head_dim/2] float32 on CPU, attention scaling applied to cos and sin)."""
    # Explicitly on the CPU: models are built under `torch.device("meta")`.
    pos_freqs = spec.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim)
    if spec.rope_type == "default":
        return 1.0 / pos_freqs, 1.0
    if spec.rope_type == "linear":
        return (1.0 / pos_freqs) / spec.factor, 1.0
    # YaRN
    factor = spec.factor
    scaling = spec.yarn_attention_factor()
    original = spec.original_max_position_embeddings

    def correction_dim(rotations: float) -> float:
        return (head_dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(spec.theta))

    low, high = correction_dim(spec.beta_fast), correction_dim(spec.beta_slow)
    if spec.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    extrapolated = 1.0 / pos_freqs
    interpolated = 1.0 / (factor * pos_freqs)
    inv_freq = interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight
    return inv_freq, float(scaling)


class Rotary:
    """cos/sin tables for one RopeSpec; frequencies cached per device (not a module buffer, so
    models built on the meta device need no re-initialisation after loading)."""

    def __init__(self, spec: RopeSpec, head_dim: int) -> None:
        self.inv_freq, self.scaling = inverse_frequencies(spec, head_dim)
        self._by_device: dict[torch.device, torch.Tensor] = {}

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] (int) -> cos, sin [B, T, head_dim] in `dtype` (computed in float32)."""
        inv_freq = self._by_device.get(positions.device)
        if inv_freq is None:
            inv_freq = self._by_device.setdefault(positions.device, self.inv_freq.to(positions.device))
        freqs = positions.float().unsqueeze(-1) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, hd]; cos/sin [B, T, hd]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos + rotate_half(x) * sin).to(x.dtype)

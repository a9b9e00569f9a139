"""The byte-level parts of Bolmo: local encoder, boundary predictor, pooling, local decoder.

Shapes: B batch, L bytes, P patches, D model width (local width = global width in Bolmo).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bolmo.config import BolmoConfig, BoundaryThreshold, parse_boundary_threshold
from bolmo.nn.mlp import SwiGLU
from bolmo.nn.mlstm import MLSTMLayer, MLSTMState
from bolmo.nn.norm import RMSNorm
from bolmo.nn.onednn import Linear

# Log-probabilities used by the reference to force a position on (0) or off (-100000).
FORCE_ON = 0.0
FORCE_OFF = -100000.0
_BOUNDARY_CLIP = 1e-3  # cosine is clipped at 1 - 1e-3 so log(1 - cos) stays finite
_LOG_HALF = torch.tensor(math.log(0.5), dtype=torch.float32)

LocalStates = list[MLSTMState]


class LocalLayer(nn.Module):
    """Pre-norm residual block: x + mLSTM(norm(x)), then x + SwiGLU(norm(x)).

    Note both pre-norms use the *global* `rms_norm_eps` (a faithful quirk of the released models).
    """

    def __init__(self, config: BolmoConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.pre_xlstm_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.xlstm = MLSTMLayer(d, config.num_local_heads)
        self.pre_feedforward_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.mlp = SwiGLU(d, config.local_intermediate_size)

    def forward(self, x: torch.Tensor, state: MLSTMState | None = None, reset: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, MLSTMState]:
        y, state = self.xlstm(self.pre_xlstm_layernorm(x), state, reset, valid)
        x = x + y
        return x + self.mlp(self.pre_feedforward_layernorm(x)), state

    def step(self, x: torch.Tensor, state: MLSTMState | None) -> tuple[torch.Tensor, MLSTMState]:
        """x [B, D]: one byte through the block, with the recurrent form of the mLSTM."""
        y, state = self.xlstm.step(self.pre_xlstm_layernorm(x), state)
        x = x + y
        return x + self.mlp(self.pre_feedforward_layernorm(x)), state


def run_layers(layers: nn.ModuleList, x: torch.Tensor, states: LocalStates | None,
               reset: torch.Tensor | None = None, valid: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, LocalStates]:
    """`valid` [B, L] (False on right padding): the returned states are each row's own."""
    new_states = []
    for i, layer in enumerate(layers):
        x, state = layer(x, states[i] if states is not None else None, reset, valid)
        new_states.append(state)
    return x, new_states


def step_layers(layers: nn.ModuleList, x: torch.Tensor, states: LocalStates | None) -> tuple[torch.Tensor, LocalStates]:
    new_states = []
    for i, layer in enumerate(layers):
        x, state = layer.step(x, states[i] if states is not None else None)
        new_states.append(state)
    return x, new_states


class BoundaryPredictor(nn.Module):
    """Decides where patches end, from the cosine between a byte and the byte `lookahead` later.

    p(byte t ends a patch) = (1 - cos(q(h_t), k(h_{t+lookahead}))) / 2: a patch ends where the
    representation changes direction. With lookahead 1 the decision for byte t needs byte t+1,
    so the last byte of a sequence is never a boundary in a plain forward pass.
    """

    def __init__(self, d_model: int, lookahead: int, threshold: BoundaryThreshold) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.threshold = threshold
        self.q_proj_layer = Linear(d_model, d_model, bias=False)
        self.k_proj_layer = Linear(d_model, d_model, bias=False)

    def cosine(self, h_now: torch.Tensor, h_next: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.q_proj_layer(h_now), dim=-1)
        k = F.normalize(self.k_proj_layer(h_next), dim=-1)
        return torch.einsum("...d,...d->...", q, k)

    @staticmethod
    def logprob_from_cosine(cos: torch.Tensor) -> torch.Tensor:
        return torch.log1p(-cos.float().clamp(max=1.0 - _BOUNDARY_CLIP)) - math.log(2)

    def logprobs(self, h: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """h [B, L, D] -> log p(boundary after byte t) [B, L] float32.

        Position 0 (BOS) always ends a patch; the last `lookahead` real bytes and any right padding
        cannot be boundaries (FORCE_OFF).
        """
        b, length, _ = h.shape
        k = self.lookahead
        lp = torch.full((b, length), FORCE_OFF, dtype=torch.float32, device=h.device)
        if k == 0:
            if length > 1:
                lp[:, 1:] = self.logprob_from_cosine(self.cosine(h[:, :-1], h[:, 1:]))
        elif length > k:
            lp[:, : length - k] = self.logprob_from_cosine(self.cosine(h[:, : length - k], h[:, k:]))
        if lengths is not None:
            positions = torch.arange(length, device=h.device)
            lp = lp.masked_fill(positions >= (lengths - k).unsqueeze(1), FORCE_OFF)
        lp[:, 0] = FORCE_ON
        return lp

    def decide(self, lp: torch.Tensor, lengths: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Boundary log-probs [B, L] -> bool mask [B, L] (True = the byte ends a patch)."""
        mode, value = self.threshold.mode, self.threshold.value
        if mode == "sample":
            if value == 0.0:
                return lp > _LOG_HALF.to(lp.device)
            return torch.bernoulli(lp.exp(), generator=generator).bool()
        # topk / topk_percent: a per-row quantile over the row's real positions.
        rows = []
        for row, n in zip(lp, lengths.tolist() if lengths is not None else [lp.shape[1]] * lp.shape[0]):
            fraction = value / n if mode == "topk" else value
            threshold = torch.quantile(row[:n], min(max(1.0 - fraction, 0.0), 1.0))
            rows.append(row >= threshold)
        mask = torch.stack(rows)
        if lengths is not None:
            mask &= torch.arange(lp.shape[1], device=lp.device) < lengths.unsqueeze(1)
        return mask


def pool(h: torch.Tensor, boundary_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Select the states of boundary bytes, in order: h [B, L, D], mask [B, L] ->
    (patch states [B, P, D], patch validity [B, P]) with P the largest count in the batch.
    Rows with fewer patches are right-padded (validity False)."""
    b, length, _ = h.shape
    counts = boundary_mask.sum(-1)
    n_patches = int(counts.max()) if b else 0
    positions = torch.arange(length, device=h.device)
    # Sort boundary positions first (in order), everything else after them.
    order = torch.argsort(positions + length * (~boundary_mask).long(), dim=-1)[:, :n_patches]
    patches = torch.gather(h, 1, order.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    valid = torch.arange(n_patches, device=h.device) < counts.unsqueeze(1)
    return patches, valid


def depool_index(boundary_mask: torch.Tensor, n_patches: int) -> torch.Tensor:
    """For each byte, the index of the patch ending at the latest boundary at or before it
    (bytes before the first boundary use patch 0): [B, L] long."""
    return (boundary_mask.long().cumsum(-1) - 1).clamp(0, max(n_patches - 1, 0))


class LocalEncoder(nn.Module):
    def __init__(self, config: BolmoConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.byte_embedding = nn.Embedding(config.vocab_size, d)
        self.subword_embedding = (
            nn.Embedding(config.subword_vocab_size, d) if config.add_expanded_embeddings else None
        )
        self.layers = nn.ModuleList(LocalLayer(config) for _ in range(config.num_local_encoder_layers))
        self.post_last_block_norm = RMSNorm(d, config.local_rms_norm_eps)
        self.out_projection = Linear(d, d, bias=True)
        self.boundary_predictor_module = BoundaryPredictor(
            d, config.boundary_predictor_lookahead, parse_boundary_threshold(config.boundary_threshold)
        )

    def embed(self, ids: torch.Tensor, expanded_ids: torch.Tensor | None) -> torch.Tensor:
        e = self.byte_embedding(ids)
        if self.subword_embedding is not None:
            if expanded_ids is None:
                raise ValueError("this model uses expanded (subword) embeddings: expanded_ids are required")
            e = e + self.subword_embedding(expanded_ids)
        return e

    def forward(self, ids: torch.Tensor, expanded_ids: torch.Tensor | None, states: LocalStates | None = None,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, LocalStates]:
        """ids [B, L] -> byte states h [B, L, D] (after post_last_block_norm), mLSTM states
        (each row's own when `valid` marks right padding)."""
        x, states = run_layers(self.layers, self.embed(ids, expanded_ids), states, valid=valid)
        return self.post_last_block_norm(x), states

    def step(self, ids: torch.Tensor, expanded_ids: torch.Tensor | None, states: LocalStates | None
             ) -> tuple[torch.Tensor, LocalStates]:
        """ids [B] (one byte per row) -> h [B, D], new states."""
        x, states = step_layers(self.layers, self.embed(ids, expanded_ids), states)
        return self.post_last_block_norm(x), states


class LocalDecoder(nn.Module):
    """Turns global patch outputs back into per-byte states: each byte gets its own encoder state
    (through in_projection) plus the output of the latest patch that ended at or before it."""

    def __init__(self, config: BolmoConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.initial_norm = RMSNorm(d, config.local_rms_norm_eps)
        self.in_projection = Linear(d, d, bias=True)
        self.layers = nn.ModuleList(LocalLayer(config) for _ in range(config.num_local_decoder_layers))

    def forward(self, h: torch.Tensor, global_out: torch.Tensor, boundary_mask: torch.Tensor,
                states: LocalStates | None = None, reset: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, LocalStates]:
        """h [B, L, D] encoder states, global_out [B, P, D], mask [B, L] -> [B, L, D]."""
        g = self.initial_norm(global_out)
        idx = depool_index(boundary_mask, g.shape[1])
        depooled = torch.gather(g, 1, idx.unsqueeze(-1).expand(-1, -1, g.shape[-1]))
        return run_layers(self.layers, self.in_projection(h) + depooled, states, reset, valid)

    def step(self, h: torch.Tensor, patch_value: torch.Tensor, states: LocalStates | None
             ) -> tuple[torch.Tensor, LocalStates]:
        """h [B, D] the byte's encoder state, patch_value [B, D] = initial_norm(global output)."""
        return step_layers(self.layers, self.in_projection(h) + patch_value, states)

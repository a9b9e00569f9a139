"""The mLSTM layer of Bolmo's local encoder/decoder (xlstm's `mLSTMLayer` as Bolmo configures it).

Two forms of one recurrence (docs/architecture.md §5):

* `MLSTMLayer.forward` — whole sequences, chunkwise-parallel (§5.4). It reproduces the reference's
  CPU "native" chunkwise kernel operation by operation: pad to a multiple of the chunk size with
  "keep state, add nothing" steps (q = k = v = 0, i~ = -25, f~ = +25), same evaluation order, and the
  returned state is the state after the padded steps, like the reference's. Order matters for
  parity: the forget-gate reset (-100000) goes through float32 in-chunk cumulative sums, which lose
  ~1e-2 absolutely; the exact recurrence would not match the reference there.
* `MLSTMLayer.step` — one token, the exact recurrence (§5.2), for decoding. `forward` with S == 1 is
  this step, as in the reference.

Gate and state arithmetic runs in float32 whatever the input dtype (float64 when the input is
float64, which the tests use); projections run in the input dtype. For bfloat16 inputs this departs
from the reference, whose CPU kernels run in the input dtype (bfloat16 is not a released dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bolmo.nn.onednn import Linear

RESET_FGATE = -100000.0  # forget-gate pre-activation that erases the state (sequence start)
_PAD_IGATE = -25.0  # padded steps: input gate ~ closed ...
_PAD_FGATE = 25.0  # ... and forget gate ~ open, so the state is carried unchanged
_MASK = -1e30  # finite "-inf" for the causal mask: exp() gives 0, gradients stay finite


@dataclass
class MLSTMState:
    """Recurrent state of one mLSTM layer (float32; float64 only for float64 inputs).

    C: [B, NH, DQK, DV] memory matrix, n: [B, NH, DQK] normaliser, m: [B, NH] log-scale stabiliser.
    """

    C: Tensor
    n: Tensor
    m: Tensor

    @classmethod
    def zeros(
        cls,
        batch: int,
        num_heads: int,
        dqk: int,
        dv: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> MLSTMState:
        """The initial state of the reference (all zeros, including m0 = 0)."""
        return cls(
            C=torch.zeros(batch, num_heads, dqk, dv, device=device, dtype=dtype),
            n=torch.zeros(batch, num_heads, dqk, device=device, dtype=dtype),
            m=torch.zeros(batch, num_heads, device=device, dtype=dtype),
        )

    def to(self, dtype: torch.dtype) -> MLSTMState:
        """Cast (no copy when already of that dtype)."""
        return MLSTMState(self.C.to(dtype), self.n.to(dtype), self.m.to(dtype))

    def detach(self) -> MLSTMState:
        """Cut the autograd graph (truncated backprop through time)."""
        return MLSTMState(self.C.detach(), self.n.detach(), self.m.detach())

    @classmethod
    def cat(cls, states: list[MLSTMState]) -> MLSTMState:
        """Stack single-row (or any) states along the batch dimension."""
        return cls(torch.cat([s.C for s in states]), torch.cat([s.n for s in states]), torch.cat([s.m for s in states]))

    def index_select(self, rows: Tensor) -> MLSTMState:
        """The state of the given batch rows (LongTensor of row indices)."""
        return MLSTMState(self.C.index_select(0, rows), self.n.index_select(0, rows), self.m.index_select(0, rows))

    def index_copy(self, rows: Tensor, new: MLSTMState) -> MLSTMState:
        """A copy of this state whose `rows` are replaced by `new` (stepping a subset of rows)."""
        return MLSTMState(
            self.C.index_copy(0, rows, new.C),
            self.n.index_copy(0, rows, new.n),
            self.m.index_copy(0, rows, new.m),
        )

    def where(self, row_mask: Tensor, other: MLSTMState) -> MLSTMState:
        """Rows where `row_mask` [B] (bool) is True from this state, the others from `other`."""
        mask = row_mask.view(-1, 1)
        return MLSTMState(
            torch.where(mask.view(-1, 1, 1, 1), self.C, other.C),
            torch.where(mask.view(-1, 1, 1), self.n, other.n),
            torch.where(mask, self.m, other.m),
        )


class MultiHeadLayerNorm(nn.Module):
    """Per-head LayerNorm without bias (mean-centred, biased variance), statistics in float32.

    Checkpoint key: `multihead_norm.weight` [NH * DV], applied after flattening the heads.
    """

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))

    def forward(self, h: Tensor) -> Tensor:
        """h [..., NH, DV] -> [..., NH * DV] in h's dtype (times the weight)."""
        # torch's fused LayerNorm kernel (no affine part; the weight spans all heads): one pass
        # where mean, centring, variance and scaling were five (8,000 bytes, d256: 4.6 against
        # 10.7 ms per layer).
        x = h.to(torch.promote_types(h.dtype, torch.float32))
        y = F.layer_norm(x, (x.shape[-1],), eps=self.eps)
        return y.to(h.dtype).flatten(-2) * self.weight


class MLSTMLayer(nn.Module):
    """mLSTM with NH heads, qk width d/2 and v width d, exponential gating soft-capped at 15.

    Parameter names are the checkpoint's (`...xlstm.<name>`). Heads are contiguous slices:
    DQK = d / (2 NH), DV = d / NH.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        chunk_size: int = 64,
        gate_soft_cap: float = 15.0,
        norm_eps: float = 1e-6,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if d_model % (2 * num_heads) != 0:
            raise ValueError(f"d_model={d_model} must be divisible by 2 * num_heads={2 * num_heads}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.dqk = d_model // (2 * num_heads)
        self.dv = d_model // num_heads
        self.chunk_size = chunk_size
        self.gate_soft_cap = gate_soft_cap
        self.eps = eps
        self.q = Linear(d_model, d_model // 2, bias=False)
        self.k = Linear(d_model, d_model // 2, bias=False)
        self.v = Linear(d_model, d_model, bias=False)
        self.ogate_preact = Linear(d_model, d_model, bias=False)
        self.igate_preact = Linear(d_model, num_heads, bias=True)
        self.fgate_preact = Linear(d_model, num_heads, bias=True)
        self.multihead_norm = MultiHeadLayerNorm(num_heads, self.dv, eps=norm_eps)
        self.out_proj = Linear(d_model, d_model, bias=False)

    def zero_state(self, batch: int, device: torch.device | str | None = None) -> MLSTMState:
        """The state before any input (what `state=None` means), float32."""
        return MLSTMState.zeros(batch, self.num_heads, self.dqk, self.dv, device=device)

    def _gates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Soft-capped input and forget pre-activations [..., NH] in the state dtype."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        cap = self.gate_soft_cap
        i = cap * torch.tanh(self.igate_preact(x).to(dtype) / cap)
        f = cap * torch.tanh(self.fgate_preact(x).to(dtype) / cap)
        return i, f

    def _output(self, h: Tensor, x: Tensor) -> Tensor:
        """h [..., NH, DV] (any dtype) -> out_proj(sigmoid(ogate(x)) * norm(h)) in x's dtype."""
        h_norm = self.multihead_norm(h.to(x.dtype))
        return self.out_proj(torch.sigmoid(self.ogate_preact(x)) * h_norm)

    def step(self, x: Tensor, state: MLSTMState | None = None) -> tuple[Tensor, MLSTMState]:
        """One recurrent step (§5.2): x [B, D] -> (y [B, D], new state)."""
        return self._step(x, state, None)

    def _step(self, x: Tensor, state: MLSTMState | None, reset: Tensor | None) -> tuple[Tensor, MLSTMState]:
        B = x.shape[0]
        dtype = torch.promote_types(x.dtype, torch.float32)
        if state is None:
            state = MLSTMState.zeros(B, self.num_heads, self.dqk, self.dv, device=x.device, dtype=dtype)
        q = self.q(x).to(dtype).view(B, self.num_heads, self.dqk)
        k = self.k(x).to(dtype).view(B, self.num_heads, self.dqk)
        v = self.v(x).to(dtype).view(B, self.num_heads, self.dv)
        i, f = self._gates(x)  # [B, NH]
        if reset is not None:
            f = f.masked_fill(reset.view(B, 1), RESET_FGATE)
        h, new_state = _recurrent_step(q, k, v, i, f, state.to(dtype), self.eps)
        return self._output(h, x), new_state

    def forward(
        self, x: Tensor, state: MLSTMState | None = None, reset: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, MLSTMState]:
        """x [B, S, D] (pre-normed) -> (y [B, S, D], state after the last, padded, step).

        `reset` [B, S] bool: at True positions the forget pre-activation becomes -100000 after the
        soft cap, forgetting everything before (a sequence starts there, e.g. after left padding).
        `valid` [B, S] bool, False on right padding: those steps are the chunk padding's "keep
        state, add nothing" steps, so each row's returned state is the one its own length gives
        (batched prefills). Outputs at padded positions are filler.
        """
        B, S, _ = x.shape
        dtype = torch.promote_types(x.dtype, torch.float32)
        if S == 0:
            zeros = MLSTMState.zeros(B, self.num_heads, self.dqk, self.dv, device=x.device, dtype=dtype)
            return x.new_empty(B, 0, self.d_model), zeros if state is None else state
        if S == 1:  # the reference runs a single recurrent step here, not the chunkwise kernel
            y, new_state = self._step(x[:, 0], state, None if reset is None else reset[:, 0])
            if valid is not None and not bool(valid.all()):
                kept = state if state is not None else self.zero_state(B, x.device).to(dtype)
                new_state = new_state.where(valid[:, 0], kept)
            return y.unsqueeze(1), new_state
        NH, L = self.num_heads, self.chunk_size
        pad = -S % L
        i, f = self._gates(x)  # [B, S, NH]
        if reset is not None:
            f = f.masked_fill(reset.unsqueeze(-1), RESET_FGATE)
        projected = x
        if valid is not None and not bool(valid.all()):
            padding = ~valid.unsqueeze(-1)
            projected = x.masked_fill(padding, 0.0)  # q = k = v = 0 (the projections have no bias)
            i = i.masked_fill(padding, _PAD_IGATE)
            f = f.masked_fill(padding, _PAD_FGATE)

        def heads(t: Tensor, value: float = 0.0) -> Tensor:
            """[B, S, NH * dh] -> [B, NH, NC, L, dh] (padded with `value`), contiguous."""
            dh = t.shape[-1] // NH
            t = t.to(dtype).view(B, S, NH, dh).transpose(1, 2)
            t = F.pad(t, (0, 0, 0, pad), value=value) if pad else t.contiguous()
            return t.view(B, NH, (S + pad) // L, L, dh)

        h, new_state = _chunkwise(
            heads(self.q(projected)),
            heads(self.k(projected)),
            heads(self.v(projected)),
            heads(i, _PAD_IGATE).squeeze(-1),
            heads(f, _PAD_FGATE).squeeze(-1),
            None if state is None else state.to(dtype),
            self.eps,
        )
        h = h.view(B, NH, S + pad, self.dv)[:, :, :S].transpose(1, 2)  # [B, S, NH, DV]
        return self._output(h, x), new_state


def _recurrent_step(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState, eps: float
) -> tuple[Tensor, MLSTMState]:
    """Exact recurrence (§5.2) in the reference step kernel's order.

    q, k [B, NH, DQK]; v [B, NH, DV]; i, f [B, NH] (soft-capped) -> h [B, NH, DV], new state.
    """
    m_old = state.m.unsqueeze(-1)  # [B, NH, 1]
    lf = F.logsigmoid(f).unsqueeze(-1)
    m = torch.maximum(lf + m_old, i.unsqueeze(-1))
    f_act = torch.exp(lf + m_old - m)
    i_act = torch.exp(i.unsqueeze(-1) - m)
    q = q * q.shape[-1] ** -0.5
    C = f_act.unsqueeze(-1) * state.C + i_act.unsqueeze(-1) * (k.unsqueeze(-1) * v.unsqueeze(-2))
    n = f_act * state.n + i_act * k
    num = (q.unsqueeze(-2) @ C).squeeze(-2)  # [B, NH, DV]
    qn = (q.unsqueeze(-2) @ n.unsqueeze(-1)).squeeze(-1)  # [B, NH, 1]
    h = num / (torch.maximum(qn.abs(), torch.exp(-m)) + eps)
    return h, MLSTMState(C, n, m.squeeze(-1))


def _chunkwise(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: MLSTMState | None, eps: float
) -> tuple[Tensor, MLSTMState]:
    """Chunkwise mLSTM (§5.4), batched over (batch, head, chunk); only the chunk-to-chunk state
    recurrence is a Python loop (sequential by nature, a few small ops per chunk).

    q, k [B, NH, NC, L, DQK]; v [B, NH, NC, L, DV]; i, f [B, NH, NC, L] soft-capped pre-activations.
    Returns h [B, NH, NC, L, DV] and the state after the last chunk.
    """
    B, NH, NC, L, DQK = q.shape
    if state is None:
        state = MLSTMState.zeros(B, NH, DQK, v.shape[-1], device=q.device, dtype=q.dtype)
    scale = DQK**-0.5

    b = F.logsigmoid(f).cumsum(-1)  # log forget product from the chunk start, [B, NH, NC, L]
    g = b[..., -1]  # whole-chunk log forget, [B, NH, NC]
    a = b[..., -1:] - b + i  # log weight of step tau in the chunk-end state
    a_max = a.amax(-1)

    # Inter-chunk recurrence. The stabiliser first (scalars per head), then the gated chunk sums
    # for all chunks at once, then the carried (C, n) in the reference's order.
    m_chunks = [state.m]
    for c in range(NC):
        m_chunks.append(torch.maximum(g[..., c] + m_chunks[-1], a_max[..., c]))
    m_all = torch.stack(m_chunks, -1)  # [B, NH, NC + 1]
    m_prev, m_next = m_all[..., :-1], m_all[..., 1:]
    k_gated = k * (a - m_next.unsqueeze(-1)).exp_().unsqueeze(-1)
    kv_sum = k_gated.transpose(-2, -1) @ v  # [B, NH, NC, DQK, DV]
    k_sum = k_gated.sum(-2)  # [B, NH, NC, DQK]
    g_bar = torch.exp(g + m_prev - m_next)
    C_chunks, n_chunks = [state.C], [state.n]
    for c in range(NC):
        gc = g_bar[..., c, None]
        C_chunks.append(gc.unsqueeze(-1) * C_chunks[-1] + kv_sum[:, :, c])
        n_chunks.append(gc * n_chunks[-1] + k_sum[:, :, c])
    C_prev = torch.stack(C_chunks[:-1], 2)  # state at each chunk start, [B, NH, NC, DQK, DV]
    n_prev = torch.stack(n_chunks[:-1], 2)

    # Intra-chunk outputs from the chunk-start state plus the causal in-chunk part.
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_d = (b.unsqueeze(-1) - b.unsqueeze(-2)).masked_fill_(~causal, _MASK).add_(i.unsqueeze(-2))
    m_inter = b + m_prev.unsqueeze(-1)  # [B, NH, NC, L]
    m_comb = torch.maximum(m_inter, log_d.amax(-1)).unsqueeze(-1)  # [B, NH, NC, L, 1]
    s = (q @ k.transpose(-2, -1)).mul_(scale) * (log_d - m_comb).exp_()
    q_gated = q * torch.exp(m_inter.unsqueeze(-1) - m_comb) * scale
    num = q_gated @ C_prev + s @ v
    den = q_gated @ n_prev.unsqueeze(-1) + s.sum(-1, keepdim=True)
    h = num / (torch.maximum(den.abs(), torch.exp(-m_comb)) + eps)
    return h, MLSTMState(C_chunks[-1], n_chunks[-1], m_chunks[-1])

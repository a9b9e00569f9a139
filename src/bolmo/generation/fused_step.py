"""Fused decode-step kernels: Bolmo's per-byte work (local encoder step, local decoder step, LM
head, and the global model's one-patch step) with as few tensor operations as the arithmetic allows.

Why this exists: at batch 1 a decode step is hundreds of tiny operations whose dispatch costs far
more than their arithmetic. Here every mLSTM layer takes one matmul for q, k, v, the output gate
and both gate pre-activations (their weights concatenated once), one for the MLP's gate and up
projections, the recurrence over all heads at once, and writes its state in place; every global
block takes one matmul for q, k, v. `StepKernels` derives the fused weights from the model's own
parameters (the checkpoint's names and tensors are untouched) and rebuilds them when a parameter
changes (`kernels_for`). The same functions run eagerly or compiled by `torch.compile`
(`bolmo.generation.compiled`); compilation never changes the arithmetic's order of operations
within the tolerance the tests check (logits within 1e-4, identical greedy bytes).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bolmo.nn.mlstm import MLSTMState
from bolmo.nn.onednn import ONEDNN, onednn_linear, pack
from bolmo.nn.rope import apply_rotary

PACKED_FROM_ROWS = 2  # steps of this many rows use the oneDNN-packed weights (BATCHES)
PACK_ROWS = 32  # the row count oneDNN's packed layout is chosen for (any count runs on it)


@dataclass
class LocalLayerWeights:
    """One local (mLSTM + SwiGLU) layer, its projections fused and held [in, out] (StepKernels'
    WEIGHT LAYOUT; [out, in] in the kernels for torch.compile on a CPU). Shapes for width D, NH heads,
    DQK = D / (2 NH), DV = D / NH, MLP width FF."""

    norm1: Tensor  # [D] pre_xlstm_layernorm
    w_in: Tensor  # [D, D/2 + D/2 + D + D + NH + NH]: q, k, v, o-gate, i-gate, f-gate (all [in, out])
    b_in: Tensor  # [D/2 + ... + NH]: zeros except the i/f gate biases
    head_norm: Tensor  # [NH, DV] multihead_norm weight
    w_out: Tensor  # [D, D] out_proj
    norm2: Tensor  # [D] pre_feedforward_layernorm
    w_gate_up: Tensor  # [D, 2 FF]
    w_down: Tensor  # [FF, D]


@dataclass
class GlobalLayerWeights:
    """One global (OLMo) block with q, k, v fused."""

    w_qkv: Tensor  # [D, H hd + 2 KV hd]
    q_norm: Tensor
    k_norm: Tensor
    w_o: Tensor
    post_attn_norm: Tensor
    w_gate_up: Tensor
    w_down: Tensor
    post_ff_norm: Tensor


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm with float32 statistics (bolmo.nn.norm.RMSNorm's arithmetic): torch's fused kernel
    for float32/float64 inputs, one op instead of seven."""
    if x.dtype in (torch.float32, torch.float64):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    x32 = x.float()
    return (weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps))).to(x.dtype)


class StepKernels:
    """Fused weights of one model plus the step functions that use them (eager functions; the
    compiled variants wrap these same methods).

    WEIGHT LAYOUT: every projection is held as [in, out] and applied as x @ W. On a CPU, one
    with more outputs than inputs is stored that way contiguously (a copy; the fused ones are
    copies anyway), the others stay views of the checkpoint's [out, in] tensor: torch's CPU
    matrix-vector product streams weights fast only along a long contiguous dimension (one
    thread, 24 MB of weights on this repository's benchmark VM: [256 -> 2048] 22 GB/s stored
    [in, out] against 8 GB/s [out, in]; [1024 -> 256] 16 GB/s [out, in] against 8 GB/s [in, out]).
    Other devices keep views (no copies beyond the fused weights).

    `for_compile` (the kernels torch.compile traces, on a CPU): every projection stays [out, in]
    and a single row goes through it as a multiply-and-sum, which inductor fuses into one
    vectorised loop: d256's 38 step matrices in 0.96 ms (29.5 GB/s) against 1.78 ms (15.8 GB/s)
    for torch's matrix-vector products in the layout above. Several rows use F.linear.

    BATCHES (several rows, eager, float32 on a CPU with oneDNN; bolmo.nn.onednn): every
    projection also gets a copy packed for oneDNN (built at the first batched step, as much
    memory again as the step's weights): the step's 38 matrices (d256) take 1.6x less time than
    through MKL in the layout above from 2 rows on two threads, 1.3-1.5x from 4 rows on one."""

    def __init__(self, model, for_compile: bool = False) -> None:
        config = model.config
        self.cpu = model.device.type == "cpu"
        self.row_reduction = for_compile and self.cpu
        inner = model.model
        encoder, decoder = inner.local_encoder, inner.local_decoder
        self.d = config.hidden_size
        first = encoder.layers[0].xlstm if len(encoder.layers) else decoder.layers[0].xlstm
        self.heads, self.dqk, self.dv = first.num_heads, first.dqk, first.dv
        self.cap, self.mlstm_eps, self.head_eps = first.gate_soft_cap, first.eps, first.multihead_norm.eps
        self.local_eps = config.rms_norm_eps  # the local pre-norms use the global eps (a model quirk)
        self.split = (self.heads * self.dqk, self.heads * self.dqk, self.heads * self.dv, self.d,
                      2 * self.heads)  # q, k, v, o-gate, then the i and f gates together
        self.ff = config.local_intermediate_size
        self.byte_embedding = encoder.byte_embedding.weight
        self.subword_embedding = None if encoder.subword_embedding is None else encoder.subword_embedding.weight
        self.encoder_layers = [self._local(layer) for layer in encoder.layers]
        self.decoder_layers = [self._local(layer) for layer in decoder.layers]
        lay = self._layout
        self.enc_norm, self.enc_norm_eps = encoder.post_last_block_norm.weight, encoder.post_last_block_norm.eps
        self.out_projection = (lay(encoder.out_projection.weight), encoder.out_projection.bias)
        self.in_projection = (lay(decoder.in_projection.weight), decoder.in_projection.bias)
        self.initial_norm, self.initial_norm_eps = decoder.initial_norm.weight, decoder.initial_norm.eps
        self.final_norm, self.final_norm_eps = inner.norm.weight, inner.norm.eps
        self.lm_head = lay(model.lm_head.weight)
        spec = inner.layers.spec
        self.global_eps = spec.rms_norm_eps
        self.n_heads, self.n_kv, self.head_dim = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.global_ff = spec.intermediate_size
        self.windows = [spec.window(i) for i in range(spec.n_layers)]  # None: full attention
        self.global_layers = [self._global(block) for block in inner.layers]
        self.batch_onednn = (ONEDNN and self.cpu and not self.row_reduction
                             and self.lm_head.dtype == torch.float32)
        self.packed: dict[Tensor, Tensor] | None = None  # layout weight -> packed (BATCHES), on first use

    def _projections(self) -> list[Tensor]:
        """Every projection weight `_linear` takes, in `_layout`."""
        layers = [(w.w_in, w.w_out, w.w_gate_up, w.w_down) for w in (*self.encoder_layers, *self.decoder_layers)]
        layers += [(w.w_qkv, w.w_o, w.w_gate_up, w.w_down) for w in self.global_layers]
        return [self.out_projection[0], self.in_projection[0], self.lm_head, *(w for ws in layers for w in ws)]

    def _packed(self, weight: Tensor) -> Tensor:
        if self.packed is None:
            with torch.no_grad():  # the layouts are [in, out]; oneDNN packs [out, in]
                self.packed = {w: pack(w.t(), PACK_ROWS) for w in self._projections()}
        return self.packed[weight]

    def _layout(self, weight: Tensor) -> Tensor:
        """An [out, in] projection weight as `_linear` takes it (see WEIGHT LAYOUT)."""
        if self.row_reduction:
            return weight
        wide = weight.shape[0] > weight.shape[1]
        return weight.t().contiguous() if self.cpu and wide else weight.t()

    def _linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """x [B, in] through a projection held by `_layout`."""
        if self.batch_onednn and x.shape[0] >= PACKED_FROM_ROWS:
            return onednn_linear(x, self._packed(weight), bias)
        if not self.row_reduction:
            return torch.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)
        if x.shape[0] != 1:
            return F.linear(x, weight, bias)
        y = (x.unsqueeze(-2) * weight).sum(-1)
        return y if bias is None else y + bias

    def _local(self, layer) -> LocalLayerWeights:
        x = layer.xlstm
        w_in = torch.cat([x.q.weight, x.k.weight, x.v.weight, x.ogate_preact.weight,
                          x.igate_preact.weight, x.fgate_preact.weight])
        b_in = torch.zeros(w_in.shape[0], dtype=w_in.dtype, device=w_in.device)
        b_in[-2 * x.num_heads:] = torch.cat([x.igate_preact.bias, x.fgate_preact.bias])
        lay = self._layout
        return LocalLayerWeights(
            norm1=layer.pre_xlstm_layernorm.weight, w_in=lay(w_in), b_in=b_in,
            head_norm=x.multihead_norm.weight.view(x.num_heads, x.dv), w_out=lay(x.out_proj.weight),
            norm2=layer.pre_feedforward_layernorm.weight,
            w_gate_up=lay(torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight])),
            w_down=lay(layer.mlp.down_proj.weight))

    def _global(self, block) -> GlobalLayerWeights:
        a, lay = block.self_attn, self._layout
        return GlobalLayerWeights(
            w_qkv=lay(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),
            q_norm=a.q_norm.weight, k_norm=a.k_norm.weight, w_o=lay(a.o_proj.weight),
            post_attn_norm=block.post_attention_layernorm.weight,
            w_gate_up=lay(torch.cat([block.mlp.gate_proj.weight, block.mlp.up_proj.weight])),
            w_down=lay(block.mlp.down_proj.weight), post_ff_norm=block.post_feedforward_layernorm.weight)

    # ------------------------------------------------------------------ local model
    def local_layer(self, x: Tensor, w: LocalLayerWeights, C: Tensor, n: Tensor, m: Tensor) -> Tensor:
        """x [B, D] through one local layer; the mLSTM state (C, n, m) is updated in place."""
        B, NH = x.shape[0], self.heads
        sdt = C.dtype  # state arithmetic: float32 (float64 for float64 models)
        cast = x.dtype != sdt  # a float32 model skips every cast (each would still be a dispatch)
        p = self._linear(_rms(x, w.norm1, self.local_eps), w.w_in, w.b_in)
        q, k, v, o, gates = p.split(self.split, dim=-1)
        if cast:
            q, k, v, gates = q.to(sdt), k.to(sdt), v.to(sdt), gates.to(sdt)
        gates = torch.tanh(gates / self.cap).mul_(self.cap)  # soft cap, [B, 2 NH]: i then f
        i = gates[:, :NH]
        lf_m = F.logsigmoid(gates[:, NH:]).add_(m)  # log f + m_old
        m_new = torch.maximum(lf_m, i)
        f_act = torch.exp(lf_m.sub_(m_new)).view(B, NH, 1)
        ik = torch.exp(i - m_new).view(B, NH, 1) * k.view(B, NH, self.dqk)  # i_act * k
        C.mul_(f_act.unsqueeze(-1)).addcmul_(ik.unsqueeze(-1), v.view(B, NH, 1, self.dv))
        n.mul_(f_act).add_(ik)
        m.copy_(m_new)
        q = q.view(B, NH, 1, self.dqk) * self.dqk ** -0.5
        num = torch.matmul(q, C)  # [B, NH, 1, DV]
        qn = torch.matmul(q, n.unsqueeze(-1))  # [B, NH, 1, 1]
        h = num / (torch.maximum(qn.abs(), torch.exp(-m_new).view(B, NH, 1, 1)) + self.mlstm_eps)
        if cast:  # the model's dtype, then float32 statistics (MultiHeadLayerNorm's order)
            h = h.to(x.dtype).to(torch.promote_types(x.dtype, torch.float32))
        h = F.layer_norm(h.view(B, NH, self.dv), (self.dv,), eps=self.head_eps)
        if cast:
            h = h.to(x.dtype)
        x = x + self._linear(torch.sigmoid(o) * (h * w.head_norm).view(B, -1), w.w_out)
        gate, up = self._linear(_rms(x, w.norm2, self.local_eps), w.w_gate_up).split(self.ff, dim=-1)
        return x + self._linear(F.silu(gate) * up, w.w_down)

    def encode(self, ids: Tensor, expanded: Tensor | None, C: list[Tensor], n: list[Tensor], m: list[Tensor]
               ) -> Tensor:
        """ids [B] -> encoder output h [B, D] (after post_last_block_norm); states in place."""
        x = F.embedding(ids, self.byte_embedding)
        if self.subword_embedding is not None:
            x = x + F.embedding(expanded, self.subword_embedding)
        for j, w in enumerate(self.encoder_layers):
            x = self.local_layer(x, w, C[j], n[j], m[j])
        return _rms(x, self.enc_norm, self.enc_norm_eps)

    def decode(self, h: Tensor, patch_value: Tensor, C: list[Tensor], n: list[Tensor], m: list[Tensor]
               ) -> Tensor:
        """Encoder output h [B, D] and patch values [B, D] -> logits [B, 520]; states in place."""
        x = self._linear(h, *self.in_projection) + patch_value
        for j, w in enumerate(self.decoder_layers):
            x = self.local_layer(x, w, C[j], n[j], m[j])
        return self._linear(_rms(x, self.final_norm, self.final_norm_eps), self.lm_head)

    def patch_in(self, h: Tensor) -> Tensor:
        """Encoder output [R, D] -> the global model's input for a new patch [R, D]."""
        return self._linear(h, *self.out_projection)

    def patch_value(self, g: Tensor) -> Tensor:
        """Global output [R, D] -> the decoder's patch value (initial_norm)."""
        return _rms(g, self.initial_norm, self.initial_norm_eps)

    # ------------------------------------------------------------------ global model
    def global_layer(self, x: Tensor, w: GlobalLayerWeights, cos: Tensor, sin: Tensor,
                     keys: Tensor, values: Tensor, write_rows: Tensor, slot: Tensor, bias: Tensor | None,
                     rows: Tensor | None, spans: list[tuple[int, int]] | None = None) -> Tensor:
        """x [R, D]: one new position for each of R rows through one block (cos/sin [R, 1, hd]).
        Their keys/values go to keys/values[write_rows, :, slot] ([B, KV, S, hd] caches, written
        in place); attention covers the S slots of the cache rows `rows` (None: all B), with
        `bias` [R, 1, 1, S] (0 visible, -inf not), or row by row over each row's own slots when
        `spans` (GlobalCache.spans) is given."""
        B = x.shape[0]
        hq, hk = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        q, k, v = self._linear(x, w.w_qkv).split((hq, hk, hk), dim=-1)
        q = apply_rotary(_rms(q, w.q_norm, self.global_eps).view(B, self.n_heads, 1, self.head_dim), cos, sin)
        k = apply_rotary(_rms(k, w.k_norm, self.global_eps).view(B, self.n_kv, 1, self.head_dim), cos, sin)
        keys[write_rows, :, slot] = k[:, :, 0]
        values[write_rows, :, slot] = v.view(B, self.n_kv, self.head_dim)
        if spans is not None:
            out = _row_attention(q, keys, values, spans)
        else:
            if rows is not None:  # a gather: only the rows that step attend (index_select copies whole
                # rows: 0.11 ms against 0.62 ms for keys[rows], 16 of 32 rows over 256 slots, d256)
                keys, values = keys.index_select(0, rows), values.index_select(0, rows)
            out = _one_query_attention(q, keys, values, bias)
        x = x + _rms(self._linear(out, w.w_o), w.post_attn_norm, self.global_eps)
        gate, up = self._linear(x, w.w_gate_up).split(self.global_ff, dim=-1)
        return x + _rms(self._linear(F.silu(gate) * up, w.w_down), w.post_ff_norm, self.global_eps)

    def global_step(self, x: Tensor, cache: GlobalCache, rows: Tensor | None) -> Tensor:
        """x [R, D] through every global block, one new position per row, at each row's own next
        position (`cache.lengths`): R = B when `rows` is None, else the cache rows `rows`.
        Slots, masks and RoPE rows are derived here from the lengths, so that a compiled step
        holds them too (one graph per step, no host work per layer)."""
        pos = cache.lengths if rows is None else cache.lengths.index_select(0, rows)
        write_rows = torch.arange(x.shape[0], device=x.device) if rows is None else rows
        per_window: dict[int | None, tuple[Tensor, Tensor]] = {}
        for w, keys, values, (cos, sin), window in zip(self.global_layers, cache.keys, cache.values, cache.rope,
                                                         self.windows):
            if window not in per_window:
                bias = None  # row-by-row attention (cache.spans) reads only visible slots: no mask
                if cache.spans is None:
                    hidden = torch.arange(keys.shape[2], device=x.device) > pos.unsqueeze(1)  # [R, slots]
                    bias = torch.zeros(hidden.shape, dtype=x.dtype, device=x.device).masked_fill(hidden, -torch.inf)
                    bias = bias[:, None, None, :]
                per_window[window] = (pos if window is None else pos % window, bias)
            slot, bias = per_window[window]
            x = self.global_layer(x, w, cos[pos][:, None], sin[pos][:, None], keys, values,
                                  write_rows, slot, bias, rows, cache.spans)
        return x

    # ------------------------------------------------------------------ whole steps
    # Two functions, not one with a branch: compiled, each is one graph call per byte, and a
    # step without the global model never evaluates the guards of the global step's graphs
    # (dynamo tries a function's graphs one after the other; the global step's change with the
    # cache's size).
    def local_step(self, ids: Tensor, expanded: Tensor | None, encoder_states: tuple[list[Tensor], ...],
                   decoder_states: tuple[list[Tensor], ...], patch_value: Tensor) -> Tensor:
        """A decode step in which no row closed a patch: each row's last byte `ids` [B] through
        the encoder step, then the decoder step with the rows' latest patch values [B, D] and the
        LM head -> logits [B, 520]. mLSTM states are written in place."""
        return self.decode(self.encode(ids, expanded, *encoder_states), patch_value, *decoder_states)

    def patch_step(self, ids: Tensor, expanded: Tensor | None, encoder_states: tuple[list[Tensor], ...],
                   decoder_states: tuple[list[Tensor], ...], patch_value: Tensor, cache: GlobalCache,
                   every_row: bool) -> tuple[Tensor, Tensor]:
        """A decode step in which the rows `cache.rows` (None: all) closed a patch: `local_step`
        with the global step in between, whose outputs become those rows' patch values.
        Returns the logits and the new patch values [B, D]; the KV cache is written in place
        (the caller advances its lengths).

        `every_row` runs the global blocks on every row, branch-free (the others' outputs are
        dropped, and their keys/values land in the slot their own next step overwrites before
        attending, so nothing they will see changes): shapes never depend on which rows closed
        (compiled steps, CUDA graphs). Otherwise only the closing rows are computed, their
        caches gathered (faster eagerly on a CPU at batch 32: 1,267 vs 1,159 bytes/s)."""
        h = self.encode(ids, expanded, *encoder_states)
        rows = cache.rows
        if rows is None or not every_row:
            x = self.patch_in(h if rows is None else h.index_select(0, rows))
            value = self.patch_value(self.global_step(x, cache, rows))
            patch_value = value if rows is None else patch_value.index_copy(0, rows, value)
        else:
            value = self.patch_value(self.global_step(self.patch_in(h), cache, None))
            closing = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device).index_fill(0, rows, True)
            patch_value = torch.where(closing.unsqueeze(1), value, patch_value)
        return self.decode(h, patch_value, *decoder_states), patch_value


class GlobalCache(NamedTuple):
    """What the global step reads from a KVCache (bolmo.generation.kv_cache.KVCache.step_inputs):
    per layer keys/values [B, KV, S, hd] (the S slots attention reads, written in place) and RoPE
    tables (cos, sin) [capacity, hd]; lengths [B] (each row's next position); the `rows` that close
    a patch ([R] indices, None for every row); `spans`, for eager steps over long caches, each
    computed row's (cache row, position) on the host: attention then runs row by row over exactly
    that row's slots (KVCache.step_inputs says when)."""

    keys: list[Tensor]
    values: list[Tensor]
    rope: list[tuple[Tensor, Tensor]]
    lengths: Tensor
    rows: Tensor | None
    spans: list[tuple[int, int]] | None = None


def _one_query_attention(q: Tensor, keys: Tensor, values: Tensor, bias: Tensor) -> Tensor:
    """Softmax attention of one query per row: q [B, H, 1, hd] over keys/values [B, KV, S, hd]
    (query heads grouped over the KV heads, GQA), `bias` [B, 1, 1, S] added to the scores ->
    [B, H * hd]. Written out (two batched matmuls and a softmax) because torch's CPU
    scaled_dot_product_attention runs a tiled flash kernel that, for a single query row, costs
    ten times more: 1.9 ms against 0.2 ms per layer at batch 32 over 268 slots."""
    B, H, _, hd = q.shape
    kv = keys.shape[1]
    grouped = (q * hd ** -0.5).view(B, kv, H // kv, hd)
    scores = torch.matmul(grouped, keys.transpose(-1, -2)) + bias  # [B, KV, G, S]
    return torch.matmul(torch.softmax(scores, dim=-1), values).view(B, H * hd)


def _row_attention(q: Tensor, keys: Tensor, values: Tensor, spans: list[tuple[int, int]]) -> Tensor:
    """`_one_query_attention` row by row: query i (q [R, H, 1, hd]) over the slots 0..position of
    cache row `spans[i]` = (row, position) in keys/values [B, KV, S, hd] (all S slots of a full
    sliding-window ring), read in place. Nothing is gathered and no slot beyond a row's own
    position is read or masked: over long caches this reads a third of what gathering the rows
    and attending over the longest one does (d256, 16 of 32 rows over 448 slots: 0.9 against
    1.5 ms per layer), at a few small operations per row."""
    R, H, _, hd = q.shape
    kv = keys.shape[1]
    grouped = (q * hd ** -0.5).view(R, kv, H // kv, hd)
    out = q.new_empty(R, kv, H // kv, hd)
    for i, (row, position) in enumerate(spans):
        n = min(position + 1, keys.shape[2])
        scores = torch.matmul(grouped[i], keys[row, :, :n].transpose(-1, -2))  # [KV, G, n]
        torch.matmul(torch.softmax(scores, dim=-1), values[row, :, :n], out=out[i])
    return out.view(R, H * hd)


# One set of fused weights per model and kind (eager, for torch.compile), rebuilt when any source
# parameter is replaced or modified in place (its data pointer or version counter changes). A weak
# map: no attribute on the model, so its state dict and module tree stay exactly the checkpoint's.
_KERNELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(model) -> tuple:
    # Inference tensors (a model loaded under torch.inference_mode) have no version counter.
    return tuple((p.data_ptr(), None if p.is_inference() else p._version, p.device, p.dtype)
                 for p in model.parameters())


def kernels_for(model, for_compile: bool = False) -> StepKernels:
    """The model's fused step kernels, eager or for torch.compile (built on first use, reused
    while its weights are unchanged)."""
    fingerprint = _fingerprint(model)
    per_kind = _KERNELS.setdefault(model, {})
    cached = per_kind.get(for_compile)
    if cached is None or cached[0] != fingerprint:
        with torch.no_grad():
            cached = (fingerprint, StepKernels(model, for_compile))
        per_kind[for_compile] = cached
    return cached[1]


def state_tensors(states: list[MLSTMState]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """(C, n, m) lists of a layer stack's states, for the kernels' in-place updates."""
    return [s.C for s in states], [s.n for s in states], [s.m for s in states]

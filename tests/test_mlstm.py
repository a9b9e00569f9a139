"""mLSTM layer (bolmo.nn.mlstm) against a plain float64 recurrence written from docs/architecture.md §5.2, §5.3.

Run: .venv/bin/python -m pytest -q tests/test_mlstm.py
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bolmo.nn.mlstm import MLSTMLayer, MLSTMState

D, NH, DQK, DV = 64, 4, 8, 16


def make_layer(d: int = D, num_heads: int = NH, chunk_size: int = 64, seed: int = 0) -> MLSTMLayer:
    """A layer with gate biases like the fixtures' (input N(0, 1), forget 3 + N(0, 1)) and a
    non-trivial head-norm weight, so every term of the math is exercised."""
    torch.manual_seed(seed)
    layer = MLSTMLayer(d, num_heads, chunk_size=chunk_size)
    with torch.no_grad():
        layer.igate_preact.bias.normal_()
        layer.fgate_preact.bias.normal_(3.0, 1.0)
        layer.multihead_norm.weight.normal_(1.0, 0.1)
    return layer


def random_state(batch: int, dtype: torch.dtype = torch.float32, seed: int = 1) -> MLSTMState:
    g = torch.Generator().manual_seed(seed)
    return MLSTMState(
        C=torch.randn(batch, NH, DQK, DV, generator=g, dtype=dtype),
        n=torch.randn(batch, NH, DQK, generator=g, dtype=dtype),
        m=torch.randn(batch, NH, generator=g, dtype=dtype),
    )


def naive(
    layer: MLSTMLayer,
    x: torch.Tensor,
    state: MLSTMState | None = None,
    reset: torch.Tensor | None = None,
    pad_to: int | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """The definition, one time step at a time, in float64. With `pad_to`, the state keeps going
    through "keep state, add nothing" steps (q = k = v = 0, i~ = -25, f~ = +25) up to that length."""
    W = {name: p.detach().double() for name, p in layer.named_parameters()}
    x = x.double()
    B, S, _ = x.shape
    q = (x @ W["q.weight"].T).view(B, S, NH, DQK)
    k = (x @ W["k.weight"].T).view(B, S, NH, DQK)
    v = (x @ W["v.weight"].T).view(B, S, NH, DV)
    i = 15 * torch.tanh((x @ W["igate_preact.weight"].T + W["igate_preact.bias"]) / 15)
    f = 15 * torch.tanh((x @ W["fgate_preact.weight"].T + W["fgate_preact.bias"]) / 15)
    if reset is not None:
        f = torch.where(reset[..., None], torch.full_like(f, -100000.0), f)
    if state is None:
        C = torch.zeros(B, NH, DQK, DV, dtype=torch.float64)
        n = torch.zeros(B, NH, DQK, dtype=torch.float64)
        m = torch.zeros(B, NH, dtype=torch.float64)
    else:
        C, n, m = state.C.double(), state.n.double(), state.m.double()
    hs = []
    for t in range(max(S, pad_to or 0)):
        if t < S:
            qt, kt, vt, it, ft = q[:, t], k[:, t], v[:, t], i[:, t], f[:, t]
        else:
            qt, kt, vt = torch.zeros_like(q[:, 0]), torch.zeros_like(k[:, 0]), torch.zeros_like(v[:, 0])
            it, ft = torch.full_like(i[:, 0], -25.0), torch.full_like(f[:, 0], 25.0)
        lf = F.logsigmoid(ft)
        m_new = torch.maximum(lf + m, it)
        fa, ia = torch.exp(lf + m - m_new), torch.exp(it - m_new)
        C = fa[..., None, None] * C + ia[..., None, None] * kt[..., :, None] * vt[..., None, :]
        n = fa[..., None] * n + ia[..., None] * kt
        m = m_new
        qs = qt / DQK**0.5
        num = torch.einsum("bhk,bhkv->bhv", qs, C)
        den = torch.maximum(torch.einsum("bhk,bhk->bh", qs, n).abs(), torch.exp(-m)) + 1e-6
        hs.append(num / den[..., None])
    h = torch.stack(hs[:S], 1)  # [B, S, NH, DV]
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, keepdim=True, unbiased=False) + 1e-6)
    h = h.reshape(B, S, D) * W["multihead_norm.weight"]
    y = (torch.sigmoid(x @ W["ogate_preact.weight"].T) * h) @ W["out_proj.weight"].T
    return y, MLSTMState(C, n, m)


def padded_length(S: int, chunk: int = 64) -> int:
    """Steps the reference's state has gone through: S == 1 is one plain step."""
    return S if S == 1 else -(-S // chunk) * chunk


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def test_parameter_names_and_shapes() -> None:
    shapes = {k: tuple(v.shape) for k, v in MLSTMLayer(D, NH).state_dict().items()}
    assert shapes == {
        "q.weight": (D // 2, D),
        "k.weight": (D // 2, D),
        "v.weight": (D, D),
        "ogate_preact.weight": (D, D),
        "igate_preact.weight": (NH, D),
        "igate_preact.bias": (NH,),
        "fgate_preact.weight": (NH, D),
        "fgate_preact.bias": (NH,),
        "multihead_norm.weight": (D,),
        "out_proj.weight": (D, D),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("S", [1, 5, 64, 100, 150])
def test_forward_matches_naive_recurrence(S: int, with_state: bool, dtype: torch.dtype) -> None:
    layer = make_layer().to(dtype)
    x = torch.randn(2, S, D, dtype=dtype)
    state = random_state(2, dtype) if with_state else None
    with torch.no_grad():
        y, st = layer(x, state)
    y_ref, st_ref = naive(layer, x, state, pad_to=padded_length(S))
    # float64: the chunkwise form is the recurrence up to rounding, including the padded steps
    # (skipping them would move C and m by ~1e-9). float32: measured <= 1e-6 on outputs ~1.
    atol, rtol = (1e-12, 1e-10) if dtype == torch.float64 else (1e-5, 1e-5)
    assert y.dtype == dtype and st.C.dtype == dtype
    assert_close(y, y_ref, atol, rtol)
    assert_close(st.C, st_ref.C, atol, rtol)
    assert_close(st.n, st_ref.n, atol, rtol)
    assert_close(st.m, st_ref.m, atol, rtol)


def test_padding_steps_with_low_stabiliser() -> None:
    # With the training init (input-gate bias -10, forget-gate bias ~0) m sits near -10, so the
    # padded steps' i~ = -25 is what keeps m (and the scale of C, n) unchanged; a pad value above
    # m would move it.
    layer = make_layer().double()
    with torch.no_grad():
        layer.igate_preact.bias.fill_(-10.0)
        layer.fgate_preact.bias.zero_()
    x = torch.randn(2, 100, D, dtype=torch.float64)
    with torch.no_grad():
        _, st = layer(x)
    _, st_ref = naive(layer, x, pad_to=128)
    assert st_ref.m.max() < -6
    assert_close(st.m, st_ref.m, atol=1e-12)
    assert_close(st.C, st_ref.C, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("with_state", [False, True])
def test_forward_equals_steps(with_state: bool) -> None:
    layer = make_layer()
    S = 100
    x = torch.randn(2, S, D)
    state = random_state(2) if with_state else None
    with torch.no_grad():
        y, st = layer(x, state)
        s, ys = state, []
        for t in range(S):
            yt, s = layer.step(x[:, t], s)
            ys.append(yt)
        y1, st1 = layer(x[:, :1], state)  # S == 1 is exactly one step
        y_first, s_first = layer.step(x[:, 0], state)
    assert s.C.dtype == torch.float32 and s.m.shape == (2, NH)
    assert_close(torch.stack(ys, 1), y, atol=1e-5)
    # forward's state went through 28 extra padded steps: equal up to a factor sigmoid(25)^28
    assert_close(s.C, st.C, atol=1e-5, rtol=1e-5)
    assert_close(s.n, st.n, atol=1e-5, rtol=1e-5)
    assert_close(s.m, st.m, atol=1e-5, rtol=1e-5)
    assert torch.equal(y1[:, 0], y_first) and torch.equal(st1.C, s_first.C) and torch.equal(st1.m, s_first.m)


@pytest.mark.parametrize("split", [1, 37, 64, 100])
def test_state_continuation(split: int) -> None:
    layer = make_layer()
    x = torch.randn(2, 150, D)
    state = random_state(2)
    with torch.no_grad():
        y, st = layer(x, state)
        y_a, st_a = layer(x[:, :split], state)
        y_b, st_b = layer(x[:, split:], st_a)
    assert_close(torch.cat([y_a, y_b], 1), y, atol=1e-5)
    assert_close(st_b.C, st.C, atol=1e-5, rtol=1e-5)
    assert_close(st_b.n, st.n, atol=1e-5, rtol=1e-5)
    assert_close(st_b.m, st.m, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reset_forgets_the_prefix(dtype: torch.dtype) -> None:
    layer = make_layer().to(dtype)
    S, starts = 150, [0, 37, 70, None]  # the last row has no reset
    x = torch.randn(len(starts), S, D, dtype=dtype)
    state = random_state(len(starts), dtype)
    reset = torch.zeros(len(starts), S, dtype=torch.bool)
    for row, p in enumerate(starts):
        if p is not None:
            reset[row, p] = True
    with torch.no_grad():
        y, st = layer(x, state, reset=reset)
        y_plain, _ = layer(x[3:], state.index_select(torch.tensor([3])))
        fresh = [layer(x[row : row + 1, p:])[0][0] for row, p in enumerate(starts[:3])]
    y_ref, st_ref = naive(layer, x, state, reset=reset, pad_to=padded_length(S))
    assert_close(y[3], y_plain[0], atol=1e-6)
    if dtype == torch.float64:
        # The chunkwise form with the -100000 forget gate is still the recurrence ...
        assert_close(y, y_ref, atol=1e-10)
        assert_close(st.C, st_ref.C, atol=1e-10, rtol=1e-10)
        # ... and after the reset it equals a fresh start up to the eps term (the stabiliser m
        # restarts at i~ there instead of max(logsigmoid(f~), i~) from m0 = 0).
        atol = 1e-6
    else:
        # float32: -100000 enters the in-chunk cumulative sums; differences of values ~1e5 lose
        # ~ulp(1e5) = 0.008 in the gate exponents (§5.4). Measured 2.4e-3 here (outputs ~1).
        atol = 1e-2
    for row, p in enumerate(starts[:3]):
        assert_close(y[row, p:], fresh[row], atol=atol)
    # and the prefix really mattered without the reset
    assert (layer(x[1:2], state.index_select(torch.tensor([1])))[0][0, 37:] - fresh[1]).abs().max() > 0.1


@pytest.mark.parametrize("with_state", [False, True])
def test_right_padding_leaves_each_row_its_own_state(with_state: bool) -> None:
    """`valid` (batched prefills): a right-padded row ends with the state (and outputs) of the
    row alone, even across extra all-padding chunks; without it the padding would be consumed."""
    layer = make_layer()
    lengths = [150, 64, 37, 1]  # the longest spans 3 chunks; 64 ends exactly on a chunk boundary
    x = torch.randn(len(lengths), max(lengths), D)
    state = random_state(len(lengths)) if with_state else None
    valid = torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(1)
    with torch.no_grad():
        y, st = layer(x, state, valid=valid)
        unmasked = layer(x, state)[1]
        for row, n in enumerate(lengths):
            own = None if state is None else state.index_select(torch.tensor([row]))
            y_alone, st_alone = layer(x[row : row + 1, :n], own)
            assert_close(y[row, :n], y_alone[0], atol=1e-5, rtol=1e-5)
            for name in ("C", "n", "m"):
                assert_close(getattr(st, name)[row], getattr(st_alone, name)[0], atol=1e-5, rtol=1e-5)
        assert (unmasked.C[1:] - st.C[1:]).abs().amax() > 1e-2  # the padding would have changed them
        # one step over a batch whose second row is padding keeps that row's state as it was
        y1, st1 = layer(x[:2, :1], state if state is None else state.index_select(torch.tensor([0, 1])),
                        valid=torch.tensor([[True], [False]]))
    kept = torch.zeros_like(st1.C[1]) if state is None else state.C[1]
    assert torch.equal(st1.C[1], kept) and not torch.equal(st1.C[0], st1.C[1])


def test_reset_single_step() -> None:
    layer = make_layer().double()
    x = torch.randn(2, 1, D, dtype=torch.float64)
    with torch.no_grad():
        y, _ = layer(x, random_state(2, torch.float64), reset=torch.ones(2, 1, dtype=torch.bool))
        y_fresh, _ = layer(x)
    assert_close(y, y_fresh, atol=1e-6)


def test_bfloat16_close_to_float32() -> None:
    layer = make_layer()
    layer_bf16 = copy.deepcopy(layer).to(torch.bfloat16)
    x = torch.randn(2, 100, D)
    with torch.no_grad():
        y, st = layer(x)
        y16, st16 = layer_bf16(x.bfloat16())
        y16_step, s16 = layer_bf16.step(x[:, 0].bfloat16())
    assert y16.dtype == torch.bfloat16 and y16_step.dtype == torch.bfloat16
    assert st16.C.dtype == s16.C.dtype == torch.float32
    rel = (y16.float() - y).norm() / y.norm()
    assert rel < 0.03, rel  # measured 0.007: bf16 projections, float32 gates and state
    assert (st16.C - st.C).norm() / st.C.norm() < 0.03


def test_gradients_finite_with_padding_and_reset() -> None:
    layer = make_layer()
    x = torch.randn(2, 100, D, requires_grad=True)  # 100 -> padded to 128
    state = random_state(2)
    for t in (state.C, state.n, state.m):
        t.requires_grad_()
    reset = torch.zeros(2, 100, dtype=torch.bool)
    reset[1, 30] = True
    y, st = layer(x, state, reset=reset)
    (y.square().sum() + st.C.sum() + st.n.sum() + st.m.sum()).backward()
    grads = [p.grad for p in layer.parameters()] + [x.grad, state.C.grad, state.n.grad, state.m.grad]
    assert all(g is not None and g.isfinite().all() and g.abs().sum() > 0 for g in grads)
    # the reset cuts the past off: nothing from row 1 after it depends on row 1 before it
    y, st = layer(x, state, reset=reset)
    (gx,) = torch.autograd.grad(y[1, 30:].square().sum() + st.C[1].sum() + st.n[1].sum(), x)
    assert gx[1, :30].abs().max() < 1e-6 * gx[1, 30:].abs().max()


def test_gradcheck_double() -> None:
    layer = make_layer(d=8, num_heads=2, chunk_size=4).double()
    x = torch.randn(1, 10, 8, dtype=torch.float64, requires_grad=True)  # 3 chunks, 2 padded steps
    reset = torch.zeros(1, 10, dtype=torch.bool)
    reset[0, 5] = True

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, st = layer(x, reset=reset)
        return y, st.C, st.n

    assert torch.autograd.gradcheck(fn, (x,))


def test_empty_sequence_keeps_state() -> None:
    layer = make_layer()
    state = random_state(2)
    y, st = layer(torch.randn(2, 0, D), state)
    assert y.shape == (2, 0, D) and st is state


def test_state_row_helpers() -> None:
    a, b = random_state(3, seed=1), random_state(3, seed=2)
    rows = torch.tensor([2, 0])
    sel = a.index_select(rows)
    assert torch.equal(sel.C, a.C[rows]) and torch.equal(sel.m, a.m[rows])
    upd = a.index_copy(rows, b.index_select(rows))
    assert torch.equal(upd.C[rows], b.C[rows]) and torch.equal(upd.n[1], a.n[1])
    mixed = a.where(torch.tensor([True, False, True]), b)
    assert torch.equal(mixed.C[1], b.C[1]) and torch.equal(mixed.n[0], a.n[0]) and torch.equal(mixed.m[2], a.m[2])
    both = MLSTMState.cat([a.index_select(torch.tensor([1])), b])
    assert both.C.shape[0] == 4 and torch.equal(both.C[0], a.C[1]) and torch.equal(both.m[1:], b.m)
    z = MLSTMState.zeros(3, NH, DQK, DV)
    assert z.C.shape == (3, NH, DQK, DV) and z.m.shape == (3, NH) and not z.m.any()

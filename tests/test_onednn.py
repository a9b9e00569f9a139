"""bolmo.nn.onednn: packed oneDNN products equal F.linear within float32 rounding at any row
count, the model's `Linear` takes oneDNN only for long inputs outside autograd, and the
environment can turn them off. (The decode step's use of them is checked against the model's
modules in tests/test_decode_engine.py; the model's forward against the reference fixtures in
tests/test_model_fixtures.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bolmo.nn import onednn
from bolmo.nn.onednn import LONG_ROWS, ONEDNN, Linear, bucket_rows, onednn_linear, pack


def test_turned_off_by_the_environment():
    check = "import bolmo.nn.onednn as o; print(o.ONEDNN)"
    env = {**os.environ, "BOLMO_ONEDNN": "0"}
    result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.skipif(not ONEDNN, reason="torch has no oneDNN backend here")
@pytest.mark.parametrize("rows", [1, 2, 7, 32, 100])
def test_packed_weights_give_the_same_products_at_any_row_count(rows):
    torch.manual_seed(rows)
    weight, bias = torch.randn(320, 256), torch.randn(320)
    packed = pack(weight.t().contiguous().t(), 32)  # a transposed layout packs like the original
    x = torch.randn(rows, 256)
    torch.testing.assert_close(onednn_linear(x, packed, bias), F.linear(x, weight, bias), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(onednn_linear(x, packed), F.linear(x, weight), atol=1e-4, rtol=1e-5)


def counting_onednn(monkeypatch) -> list[int]:
    """The row counts oneDNN's products are called with."""
    calls: list[int] = []
    monkeypatch.setattr(onednn, "onednn_linear", lambda x, *args: calls.append(x.shape[0]) or onednn_linear(x, *args))
    return calls


def test_row_counts_are_padded_to_few_sizes():
    sizes = [bucket_rows(n) for n in range(1, 100_001)]
    assert all(n <= size <= n + n / 8 for n, size in zip(range(1, 100_001), sizes))
    assert len(set(sizes[LONG_ROWS - 1:])) < 80  # the kernels oneDNN keeps: a bounded number


@pytest.mark.skipif(not ONEDNN, reason="torch has no oneDNN backend here")
def test_padded_rows_give_each_row_its_own_product(monkeypatch):
    calls = counting_onednn(monkeypatch)
    torch.manual_seed(0)
    layer = Linear(256, 352)
    x = torch.randn(3, 347, 256)  # 1,041 rows, padded to 1,152
    with torch.inference_mode():
        out = layer(x)
    assert calls == [bucket_rows(3 * 347)] and calls[0] > 3 * 347
    assert out.shape == (3, 347, 352) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not ONEDNN, reason="torch has no oneDNN backend here")
def test_linear_takes_onednn_for_long_inference_inputs_only(monkeypatch):
    calls = counting_onednn(monkeypatch)
    torch.manual_seed(0)
    layer = Linear(256, 352)
    short, long = torch.randn(1, LONG_ROWS - 1, 256), torch.randn(2, LONG_ROWS // 2, 256)
    with torch.inference_mode():
        assert torch.equal(layer(short), F.linear(short, layer.weight, layer.bias))
        assert not calls
        torch.testing.assert_close(layer(long), F.linear(long, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        assert calls
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's bfloat16 product, as F.linear
            assert layer(long).dtype == torch.bfloat16 and not calls
        layer = layer.to(torch.bfloat16)  # only float32 products change backend
        assert torch.equal(layer(long.bfloat16()), F.linear(long.bfloat16(), layer.weight, layer.bias))
        assert not calls


def test_linear_trains_through_autograd_at_any_length(monkeypatch):
    """oneDNN's op has no backward: with gradients on, even a long input takes F.linear."""
    calls = counting_onednn(monkeypatch)
    torch.manual_seed(0)
    layer = Linear(64, 32)
    x = torch.randn(LONG_ROWS * 2, 64, requires_grad=True)
    layer(x).square().sum().backward()
    expected = torch.nn.Linear(64, 32)
    expected.load_state_dict(layer.state_dict())
    x2 = x.detach().clone().requires_grad_(True)
    expected(x2).square().sum().backward()
    assert not calls
    assert torch.equal(layer.weight.grad, expected.weight.grad) and torch.equal(x.grad, x2.grad)


@pytest.mark.skipif(not ONEDNN, reason="torch has no oneDNN backend here")
def test_a_compiled_model_keeps_f_linear():
    """Before: torch.compile of the model on a CPU failed in inductor (its lowering of oneDNN's op
    asserts frozen weights) as soon as an inference input reached LONG_ROWS rows."""
    torch.manual_seed(0)
    layer = Linear(64, 32)
    compiled = torch.compile(lambda x: torch.relu(layer(x)))
    x = torch.randn(1, LONG_ROWS + 3, 64)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), torch.relu(F.linear(x, layer.weight, layer.bias)))

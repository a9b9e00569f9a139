"""bolmo.nn.linear: CPU float32 inference through oneDNN, everything else through F.linear, and
the same numbers either way within float32 rounding."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bolmo.nn import linear as linear_module
from bolmo.nn.linear import MIN_ROWS, ONEDNN, Linear, onednn_linear, pack

needs_onednn = pytest.mark.skipif(not ONEDNN, reason="torch has no oneDNN backend here")


@pytest.fixture
def onednn_calls(monkeypatch):
    calls = []

    def counting(x, weight, bias=None):
        calls.append(tuple(x.shape))
        return onednn_linear(x, weight, bias)

    monkeypatch.setattr(linear_module, "onednn_linear", counting)
    return calls


@needs_onednn
def test_inference_runs_on_onednn_and_matches_f_linear(onednn_calls):
    torch.manual_seed(0)
    layer = Linear(96, 160, bias=True)
    x = torch.randn(2, 40, 96)
    with torch.inference_mode():
        y = layer(x)
    assert onednn_calls == [(2, 40, 96)]
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_training_single_rows_and_other_dtypes_use_f_linear(onednn_calls):
    torch.manual_seed(0)
    layer = Linear(32, 48)
    x = torch.randn(MIN_ROWS, 32, requires_grad=True)
    layer(x).sum().backward()  # autograd: F.linear, gradients flow to both sides
    assert x.grad is not None and layer.weight.grad is not None
    with torch.no_grad():
        layer(torch.randn(MIN_ROWS - 1, 32))  # too few rows for oneDNN to pay off
        layer.to(torch.float64)(torch.randn(MIN_ROWS, 32, dtype=torch.float64))
    assert onednn_calls == []


def test_turned_off_by_the_environment():
    check = "import bolmo.nn.linear as l; print(l.ONEDNN)"
    env = {**os.environ, "BOLMO_ONEDNN": "0"}
    result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@needs_onednn
@pytest.mark.parametrize("rows", [1, 2, 7, 32, 100])
def test_packed_weights_give_the_same_products_at_any_row_count(rows):
    torch.manual_seed(rows)
    weight, bias = torch.randn(320, 256), torch.randn(320)
    packed = pack(weight.t().contiguous().t(), 32)  # a transposed layout is packed like the original
    x = torch.randn(rows, 256)
    torch.testing.assert_close(onednn_linear(x, packed, bias), F.linear(x, weight, bias), atol=1e-4, rtol=1e-5)

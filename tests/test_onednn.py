"""bolmo.nn.onednn: packed oneDNN products equal F.linear within float32 rounding at any row
count, and the environment can turn them off. (The decode step's use of them is checked against
the model's modules in tests/test_decode_engine.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bolmo.nn.onednn import ONEDNN, onednn_linear, pack


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

"""Linear layers whose CPU inference runs on oneDNN's float32 matrix products.

Why: torch's CPU `F.linear` / `torch.mm` in float32 call MKL's sgemm, which on AMD processors
(where MKL does not take its AVX-512 paths) is measurably slower than oneDNN's, which torch also
ships. Measured on this repository's AMD EPYC benchmark VM with Bolmo's projection shapes (d256's
38 step matrices, 27 MB): on two threads oneDNN took 1.2-1.55x less time than MKL from 2 to 512
rows (a whole forward over 1,000-8,000 bytes 1.1-1.2x faster); on one thread the two are even
(0.96-1.19x from 16 rows, 0.83x at 2). With the weights packed once ahead into oneDNN's layout
(`pack`, no reordering per call: what batched decode steps use, bolmo.generation.fused_step)
1.6x on two threads and 1.3-1.5x on one from 4 rows; for a single row MKL's matrix-vector
product stays ahead (0.85-0.96x). Results differ from MKL's only in float32 summation order
(~1e-6 relative per product).

`Linear` uses it for inference only (no autograd graph: training keeps `F.linear`), for float32
on a CPU with torch's oneDNN backend available, from `MIN_ROWS` rows. `BOLMO_ONEDNN=0` turns it
off (read at import).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ONEDNN_ENV = "BOLMO_ONEDNN"
MIN_ROWS = 16  # fewer rows: even on one thread, and a one-row product is MKL's matrix-vector one


def _onednn_enabled() -> bool:
    """oneDNN matrix products are available here and not turned off by BOLMO_ONEDNN=0."""
    if os.environ.get(ONEDNN_ENV, "1").strip().lower() in ("0", "false", "no"):
        return False
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


ONEDNN = _onednn_enabled()  # read once: a per-call environment lookup would cost more than small products


def onednn_applies(x: Tensor, weight: Tensor) -> bool:
    """Should x @ weight.T run on oneDNN? CPU float32 inference with at least MIN_ROWS rows."""
    return (ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and x.numel() >= MIN_ROWS * x.shape[-1])


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x [..., in] @ weight [out, in] (or a `pack`ed weight) + bias, through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def pack(weight: Tensor, rows: int) -> Tensor:
    """weight [out, in] reordered once into oneDNN's blocked layout for products of about `rows`
    rows (any row count still works): what `onednn_linear` then runs without reordering."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same checkpoint names) whose CPU float32 inference runs on
    oneDNN (see the module docstring); training and other devices and dtypes use `F.linear`."""

    def forward(self, x: Tensor) -> Tensor:
        if onednn_applies(x, self.weight):
            return onednn_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

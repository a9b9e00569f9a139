"""float32 matrix products on a CPU through oneDNN with weights packed once (batched decode steps).

Why: torch's CPU `torch.mm` / `F.linear` in float32 call MKL's sgemm, which reorders ("packs")
the weight matrix at every call (and on this repository's AMD EPYC VM reached 70-75 GFLOP/s per
core on a 1,024-square product, oneDNN 80-95 on Bolmo's projections over 4,000 rows). torch also
ships oneDNN, whose linear kernel can run on a weight packed once ahead into its own layout.
Measured on that VM with the 38 matrices of a `d256` decode step (27 MB): packed oneDNN took 1.6x
less time than MKL from 2 rows on two threads and 1.3-1.5x from 4 rows on one; for a single row
MKL's matrix-vector product stays ahead (0.85-0.96x). Results differ from MKL's only in float32
summation order (~1e-6 relative per product).

Not used for whole-sequence forwards: without packing, oneDNN builds a kernel for every new row
count (0.5-1 ms the first time a shape is seen), so prompts and documents of varied lengths ran
slower than through MKL (per-row prefills of 3-250 bytes: 1.4 s against 1.1 s). A decode batch
sees at most as many row counts as it has rows, each built once.

`BOLMO_ONEDNN=0` turns it off (read at import).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

ONEDNN_ENV = "BOLMO_ONEDNN"


def _onednn_enabled() -> bool:
    """oneDNN is available here and not turned off by BOLMO_ONEDNN=0."""
    if os.environ.get(ONEDNN_ENV, "1").strip().lower() in ("0", "false", "no"):
        return False
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


ONEDNN = _onednn_enabled()


def pack(weight: Tensor, rows: int) -> Tensor:
    """weight [out, in] (float32, CPU) reordered once into oneDNN's layout for products of about
    `rows` rows (any row count still runs on it): what `onednn_linear` then takes as is."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)


def onednn_linear(x: Tensor, packed: Tensor, bias: Tensor | None = None) -> Tensor:
    """x [..., in] through a `pack`ed weight (+ bias) -> [..., out], on oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

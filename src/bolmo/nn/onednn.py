"""float32 matrix products on a CPU through oneDNN: long inputs (whole-sequence forwards) and
batched decode steps (weights packed once).

Why: torch's CPU `torch.mm` / `F.linear` in float32 call MKL's sgemm, which on AMD CPUs runs its
AVX2 code even where the CPU has AVX-512 (MKL picks its kernels by vendor), while oneDNN, which
torch also ships, picks them by instruction set. On this repository's 2-core AMD EPYC (Zen 5,
AVX-512) VM, two threads: MKL 155-183 GFLOP/s on Bolmo's projections over 4,000-8,000 rows,
oneDNN 385-450 (docs/generation.md; on an earlier AMD VM type 70-75 against 80-95 per core).
Results differ from MKL's only in float32 summation order (~1e-6 relative per product).

* `Linear` (the model's projections): inputs of at least `LONG_ROWS` rows go through oneDNN,
  outside autograd. oneDNN builds a kernel for every new row count (0.5-1 ms the first time a
  shape is seen), which short inputs of varied lengths do not win back (per-row prefills of 3-250
  bytes: 1.4 s against 1.1 s for 32 prompts); over 40 forwards of fresh lengths (200-2,000 bytes)
  the threshold at 128 / 256 / 512 / 1,024 rows gained 1.14x / 1.17x / 1.13x / 1.05x. Row counts
  are padded to 8 sizes per power of two (`bucket_rows`), so that the kernels oneDNN keeps per
  row count (~0.6 MB each) do not grow a long-running process's memory with every new length.
* `pack` / `onednn_linear` (batched decode steps): weights reordered once into oneDNN's layout.
  Measured on the earlier AMD VM type with the 38 matrices of a `d256` decode step (27 MB): packed
  oneDNN took 1.6x less time than MKL from 2 rows on two threads and 1.3-1.5x from 4 rows on one;
  for a single row MKL's matrix-vector product stays ahead (0.85-0.96x).

`BOLMO_ONEDNN=0` turns both off (read at import).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bolmo.config import env_switch

ONEDNN_ENV = "BOLMO_ONEDNN"
LONG_ROWS = 256  # see the module docstring


def _onednn_enabled() -> bool:
    """oneDNN is available here and not turned off by BOLMO_ONEDNN=0."""
    if not env_switch(ONEDNN_ENV, True):
        return False
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


ONEDNN = _onednn_enabled()


def pack(weight: Tensor, rows: int) -> Tensor:
    """weight [out, in] (float32, CPU) reordered once into oneDNN's layout for products of about
    `rows` rows (any row count still runs on it): what `onednn_linear` then takes as is."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x [..., in] through a weight [out, in] or a `pack`ed one (+ bias) -> [..., out], on oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def bucket_rows(rows: int) -> int:
    """`rows` rounded up to one of 8 sizes per power of two (at most 1/8 more rows): oneDNN keeps
    a kernel, ~0.6 MB, for every row count it has seen (up to 1,024 of them), so a process scoring
    texts of many lengths grew by gigabytes; padded to these sizes, it sees a few dozen counts."""
    step = 1 << max(0, rows.bit_length() - 4)
    return -(-rows // step) * step


def _bucketed_onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """onednn_linear over x's rows padded with zeros to `bucket_rows` of them."""
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.shape[0]
    padded_rows = bucket_rows(rows)
    if padded_rows != rows:
        padded = flat.new_empty(padded_rows, flat.shape[1])
        padded[:rows].copy_(flat)
        padded[rows:].zero_()
        flat = padded
    return onednn_linear(flat, weight, bias)[:rows].reshape(*x.shape[:-1], weight.shape[0])


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear; on oneDNN for float32 CPU inputs of at least LONG_ROWS rows outside autograd
    (oneDNN's op has no backward), outside torch.compile (inductor lowers this op only for
    frozen weights, and picks its own kernels for F.linear) and outside CPU autocast (which would
    not apply to it)."""
    if (ONEDNN and x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_grad_enabled()
            and x.numel() >= LONG_ROWS * x.shape[-1] and weight.dtype == torch.float32
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")):
        return _bucketed_onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear whose long float32 CPU inference inputs run on oneDNN (`linear`); same parameters
    and state-dict keys."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)

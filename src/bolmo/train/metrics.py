"""Training metrics: FLOPs accounting for MFU, the metrics.jsonl log (plus optional TensorBoard and
W&B), the progress bar, and the loss-curve plot drawn at the end."""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bolmo.train.config import LoggingConfig

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"
# Dense bfloat16 peak FLOP/s of common accelerators (vendor datasheets, no sparsity).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                  "A10G": 70e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12}


# ----------------------------------------------------------------------------- FLOPs and MFU

def _count(modules: list[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@dataclass
class FlopsPerStep:
    """Training FLOPs from parameter counts: a parameter costs 2 FLOPs per position forward and
    4 more backward (6 in all); frozen blocks on a gradient path cost 4 (no weight gradient),
    teacher forwards 2. Embedding lookups are free; attention's own FLOPs are left out."""

    per_byte: float  # positions every byte runs through (local models, byte head)
    per_patch: float  # positions every patch (or subword token) runs through (global model, teacher)

    @classmethod
    def of(cls, stage: str, model: nn.Module, encoder_lookahead: int = 0, teacher_head: nn.Module | None = None
           ) -> "FlopsPerStep":
        inner = model.model
        blocks = _count([inner.layers])
        if stage == "subword":
            return cls(0.0, 6.0 * (blocks + _count([model.lm_head])))
        enc, dec = inner.local_encoder, inner.local_decoder
        local = _count([*enc.layers, enc.post_last_block_norm, enc.boundary_predictor_module, dec, inner.norm,
                        model.lm_head])
        per_patch_local = 6.0 * _count([enc.out_projection])
        if stage == "stage2":
            return cls(6.0 * local, per_patch_local + 6.0 * blocks)
        lookahead = blocks * encoder_lookahead / len(inner.layers)
        teacher = 2.0 * (blocks + _count([teacher_head])) if teacher_head is not None else 0.0
        return cls(6.0 * local, per_patch_local + 4.0 * lookahead + teacher)

    def __call__(self, n_bytes: float, n_patches: float) -> float:
        return self.per_byte * n_bytes + self.per_patch * n_patches


def peak_flops(device: torch.device, configured: float | None) -> tuple[float | None, str]:
    """Peak FLOP/s of one device and where the number comes from: the config, the table of known
    GPUs, or (CPU) a short float32 matmul measurement, a practical ceiling on that machine."""
    if configured:
        return configured, "config"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value, f"table ({key} bf16 dense)"
        return None, f"unknown GPU {name!r}: set peak_flops"
    return measure_matmul_flops(), "measured fp32 matmul"


def measure_matmul_flops(n: int = 1024, seconds: float = 0.3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return 2.0 * n**3 * done / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- logging

class MetricsLogger:
    """metrics.jsonl (+ TensorBoard / W&B when enabled and installed) every `every` steps and at
    the last step; a progress bar or, without one, a console line. Rank 0 only."""

    def __init__(self, run_dir: Path, config: LoggingConfig, total_steps: int, start_step: int, enabled: bool,
                 run_config: dict[str, Any]) -> None:
        self.config, self.total, self.enabled = config, total_steps, enabled
        self.path = run_dir / METRICS_FILE
        self.bar = self.tensorboard = self.wandb = None
        if not enabled:
            return
        truncate_metrics(self.path, start_step)  # steps after the checkpoint are redone
        if config.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr)
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                warnings.warn("logging.tensorboard: the tensorboard package is not installed; skipped", stacklevel=2)
        if config.wandb_project:
            try:
                import wandb

                self.wandb = wandb.init(project=config.wandb_project, dir=str(run_dir), config=run_config,
                                        resume="allow", name=run_dir.name)
            except ImportError:
                warnings.warn("logging.wandb_project: the wandb package is not installed; skipped", stacklevel=2)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", bpb=f"{metrics.get('bpb', float('nan')):.3f}",
                                 kbps=f"{metrics['bytes_per_s'] / 1e3:.1f}", refresh=False)
        if step % self.config.every and step != self.total:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.bar is None:
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                             if k in ("loss", "ce", "bpb", "boundary_f1", "bytes_per_patch", "lr", "bytes_per_s", "mfu"))
            print(f"step {step}/{self.total} {shown}", file=sys.stderr, flush=True)
        if self.tensorboard is not None:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(f"train/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines after `last_step`: a resumed run logs those steps again."""
    rows = read_metrics(path)
    kept = [r for r in rows if r["step"] <= last_step]
    if len(kept) != len(rows):
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def plot_losses(metrics_path: Path, out: Path) -> Path | None:
    """The loss curves of metrics.jsonl as a PNG: the objective and each loss term, and bits per
    byte. Returns None (and draws nothing) when matplotlib is missing or there is nothing to draw."""
    rows = read_metrics(metrics_path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    terms = sorted({k for r in rows for k in r if k.startswith("loss/")})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(steps, [r["loss"] for r in rows], label="objective", linewidth=2)
    for term in terms:
        left.plot(steps, [r.get(term, float("nan")) for r in rows], label=term[len("loss/"):])
    left.set(xlabel="step", ylabel="loss", yscale="log", title="training objective and terms")
    left.legend()
    right.plot(steps, [r.get("bpb", float("nan")) for r in rows])
    right.set(xlabel="step", ylabel="bits per byte", title="bits per byte (training batches)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

"""AdamW parameter groups and the learning-rate schedule (docs/training-reference.md §5)."""

from __future__ import annotations

import math

import torch
from torch import nn

from bolmo.train.config import OptimConfig, ScheduleConfig

# Embedding tables (HF names): no weight decay, as in the reference.
EMBEDDING_SUFFIXES = ("byte_embedding.weight", "subword_embedding.weight", "embed_tokens.weight")
GLOBAL_BLOCKS_PREFIX = "model.layers."


def param_groups(model: nn.Module, optim: OptimConfig, global_lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters grouped by (weight decay, LR scale). `lr_scale` rides along in each
    group (and in checkpoints); the global blocks get `global_lr_scale` (stage 2: ½)."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = name.endswith(EMBEDDING_SUFFIXES) or (not optim.decay_norms_and_biases and param.ndim < 2)
        scale = global_lr_scale if name.startswith(GLOBAL_BLOCKS_PREFIX) else 1.0
        groups.setdefault((0.0 if no_decay else optim.weight_decay, scale), []).append(param)
    return [{"params": params, "weight_decay": wd, "lr_scale": scale} for (wd, scale), params in sorted(groups.items())]


def build_optimizer(model: nn.Module, optim: OptimConfig, global_lr_scale: float = 1.0) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, optim, global_lr_scale), lr=optim.lr, betas=tuple(optim.betas),
                             eps=optim.eps)


def warmup_steps(schedule: ScheduleConfig) -> int:
    return round(schedule.warmup_fraction * schedule.steps)


def lr_multiplier(step: int, schedule: ScheduleConfig) -> float:
    """Multiplier of the peak LR at optimizer step `step` (1 for the first step): g/W during
    warm-up, then linear or cosine decay from 1 to `final_lr_ratio` at `steps`."""
    warmup, total, final = warmup_steps(schedule), schedule.steps, schedule.final_lr_ratio
    if step < warmup:
        return step / warmup
    if schedule.decay == "constant" or total <= warmup:
        return 1.0
    progress = min((step - warmup) / (total - warmup), 1.0)
    if schedule.decay == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - final) * progress


def set_lr(optimizer: torch.optim.Optimizer, peak_lr: float, multiplier: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = peak_lr * group["lr_scale"] * multiplier

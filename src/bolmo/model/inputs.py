"""Checks on the tensors a model's forward takes (Bolmo's and the subword OLMo model's), so that bad
input is one InputError naming the tensor instead of an IndexError from inside torch's embedding."""

from __future__ import annotations

import torch

from bolmo.errors import InputError


def check_inputs(input_ids: torch.Tensor, vocab_size: int, **same_shape: torch.Tensor | None) -> None:
    """Refuse, with an InputError naming the tensor, what would otherwise fail deep inside torch
    (an embedding IndexError, a broadcast RuntimeError). Cheap enough for every training step: one
    min/max reduction over the ids, shapes compared on the host."""
    if not isinstance(input_ids, torch.Tensor):
        raise InputError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise InputError(f"input_ids must hold integer ids (torch.long), got {input_ids.dtype}")
    if input_ids.numel() == 0:
        raise InputError(f"input_ids is empty (shape {tuple(input_ids.shape)}): every row needs at least the BOS id")
    low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one reduction, one copy to the host
    if low < 0 or high >= vocab_size:
        raise InputError(f"input_ids must be in [0, {vocab_size}), got ids from {low} to {high}")
    for name, tensor in same_shape.items():
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.shape != input_ids.shape:
            raise InputError(f"{name} has shape {tuple(tensor.shape)}, but input_ids has {tuple(input_ids.shape)}: "
                             "they must match")
        if name == "attention_mask" and not bool(tensor.any()):
            raise InputError("attention_mask is all zeros: no row has a position to run (each needs at least "
                             "its BOS)")

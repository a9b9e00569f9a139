"""Training targets of a byte sequence: next-byte labels, true patch boundaries, and the fused
labels of the 520-way head. Shared by instance building (bolmo.train.data), compression
(bolmo.train.compression) and the losses, so none of them imports another for these."""

from __future__ import annotations

import torch

from bolmo.config import EOS_ID, PAD_ID, PLAIN_VOCAB

IGNORE_INDEX = -100


def next_byte_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] -> [B, L] plain labels: input_ids[t+1] where byte t+1 is real (non-PAD), else -100."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    nxt = input_ids[:, 1:]
    labels[:, :-1] = torch.where(nxt != PAD_ID, nxt, IGNORE_INDEX)
    return labels


def boundary_targets(input_ids: torch.Tensor, patch_lens: torch.Tensor,
                     skip_boundary_before_eos: bool = True) -> torch.Tensor:
    """True patch boundaries, `boundary_mode = "end"`: [B, L] ids, [B, P] lengths -> [B, L] bool.

    y[t] = 1 iff t is the last byte of a patch; with `skip_boundary_before_eos`, not when byte t+1
    is EOS (so a document's last token and its EOS are one patch); y[0] = 1 (BOS) always.
    """
    length = input_ids.shape[1]
    ends = patch_lens.cumsum(-1) - 1
    ends = torch.where((ends >= length) | (ends < 0), 0, ends)  # overflow -> byte 0, a boundary anyway
    y = torch.zeros_like(input_ids, dtype=torch.bool).scatter_(1, ends, True)
    if skip_boundary_before_eos:
        y[:, :-1] &= input_ids[:, 1:] != EOS_ID
    y[:, 0] = True
    return y


def fuse_labels(labels: torch.Tensor, boundary_mask: torch.Tensor) -> torch.Tensor:
    """Fused labels for the 520-way head: labels[t] + 260 where byte t+1 is an active boundary
    and itself has a label (so the last real byte is never fused). Accepts plain or already
    fused labels (stage 2 re-fuses with the predicted mask): [B, L], [B, L] bool -> [B, L]."""
    plain = torch.where(labels >= 0, labels % PLAIN_VOCAB, labels)
    has_label = plain != IGNORE_INDEX
    fused = plain.clone()
    fused[:, :-1] += PLAIN_VOCAB * (boundary_mask[:, 1:] & has_label[:, 1:]).long()
    return fused

"""Compression control for stage 2 (docs/training-reference.md §4.2): raise bytes per patch above the
subword ratio by rewriting each instance's *target* patches before the forward pass.

The target ratio grows linearly from `start_ratio` to `target_ratio`; each instance merges
adjacent true patches (in the order a per-instance BPE run over its teacher tokens would merge
them: kind "bpe"), or interpolates between subword and whitespace patches (kind "space"), until
its bytes per patch reach the current ratio. The boundary targets and fused labels then follow the
rewritten patches; the teacher alignment no longer holds, so no teacher may be used with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bolmo.config import BYTE_OFFSET
from bolmo.errors import ConfigError
from bolmo.train.labels import IGNORE_INDEX, boundary_targets, fuse_labels

MAX_SPACE_PATCH = 16
_STRICT_SPACE = frozenset(b" \t\n\r")
_WORD = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def compression_ratio(step: int, start_ratio: float, target_ratio: float, steps: int) -> float:
    """r(g) = start + (target - start) * g / G for g < G, else target."""
    if step >= steps:
        return target_ratio
    return start_ratio + (target_ratio - start_ratio) * step / steps


def bpe_merge_positions(tokens: np.ndarray, rng: np.random.Generator,
                        max_compression_ratio: float = 0.01) -> np.ndarray:
    """The merge list of one instance's teacher tokens `o` ([S] ids): run BPE on the sequence
    itself (most frequent adjacent pair, ties uniformly at random, every non-overlapping
    occurrence left to right becomes a fresh id) while len / S > max_compression_ratio. Returns
    merge positions m, in order; applying "merge element m with m + 1" one after another
    reproduces the merged sequence."""
    seq = np.asarray(tokens, np.int64).copy()
    start_len, fresh = len(seq), int(seq.max(initial=0)) + 1
    merges: list[int] = []
    while len(seq) > 1 and len(seq) / start_len > max_compression_ratio:
        keys = seq[:-1] * fresh + seq[1:]  # fresh exceeds every id, so keys identify pairs
        pairs, counts = np.unique(keys, return_counts=True)
        best = counts.max()
        if best == 1:
            break
        pick = rng.choice(pairs[counts == best])
        positions = np.flatnonzero(keys == pick)
        if seq[positions[0]] == seq[positions[0] + 1]:  # "a a a": occurrences may overlap
            kept: list[int] = []
            for p in positions.tolist():
                if not kept or p > kept[-1] + 1:
                    kept.append(p)
            positions = np.asarray(kept)
        merges.extend((positions - np.arange(len(positions))).tolist())
        seq[positions] = fresh
        seq = np.delete(seq, positions + 1)
        fresh += 1
    # Every pair is now unique and stays so (merges make fresh ids): each further step merges a
    # uniformly random adjacent pair.
    length = len(seq)
    while length > 1 and length / start_len > max_compression_ratio:
        merges.append(int(rng.integers(length - 1)))
        length -= 1
    return np.asarray(merges, np.int64)


def apply_merges(patch_lens: Sequence[int], merges: Sequence[int], n_bytes: int, ratio: float) -> np.ndarray:
    """Merge patches ([P] lengths, zero-padded; patch 0 is BOS) in merge-list order until
    n_bytes / n_patches >= ratio. Merge m joins patches m+1 and m+2 (the +1 skips BOS); entries
    < 0 (padding) and merges past the last patch are ignored. Returns [P] lengths, zero-padded."""
    patches = [int(x) for x in patch_lens if x != 0]
    for m in merges:
        if n_bytes / len(patches) >= ratio:
            break
        if 0 <= m and m + 2 < len(patches):
            patches[m + 1] += patches.pop(m + 2)
    out = np.zeros(len(patch_lens), np.int64)
    out[:len(patches)] = patches
    return out


def space_patch_lens(byte_ids: Sequence[int], max_patch: int = MAX_SPACE_PATCH) -> np.ndarray:
    """Rule-based whitespace patches of a byte-id sequence (§1.8): a patch ends after byte t when
    t and t+1 differ in being "spacelike" (not [0-9A-Za-z] and not a UTF-8 continuation byte)
    or in being a strict space (space, tab, LF, CR), when it has `max_patch` bytes, or after a
    special id (BOS/EOS/PAD); but a run of strict spaces that opens a patch is kept with what
    follows, so leading whitespace attaches to the next word. Returns the patch lengths."""
    ids = list(byte_ids)
    spacelike, strict = [], []
    for x in ids:
        b = x - BYTE_OFFSET
        spacelike.append(x < BYTE_OFFSET or not (b in _WORD or 0x80 <= b <= 0xBF))
        strict.append(x >= BYTE_OFFSET and b in _STRICT_SPACE)
    lens: list[int] = []
    start, leading = 0, True
    for t, x in enumerate(ids):
        leading = leading and strict[t]
        size = t - start + 1
        last = t == len(ids) - 1
        close = last or size >= max_patch or x < BYTE_OFFSET or (not leading and (
            spacelike[t] != spacelike[t + 1] or strict[t] != strict[t + 1]))
        if close:
            lens.append(size)
            start, leading = t + 1, True
    return np.asarray(lens, np.int64)


def _ends(lens: np.ndarray) -> set[int]:
    lens = lens[lens != 0]
    return set((np.cumsum(lens) - 1).tolist())


def interpolate_space_boundaries(patch_lens: np.ndarray, space_lens: np.ndarray, n_bytes: int,
                                 ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Kind "space": keep the patch ends common to subword and space patches, plus a random
    floor((1-u)·|subword-only|) subword-only ends and floor(u·|space-only|) space-only ends, with
    u = clip((ratio - R_sub) / max(R_space - R_sub, 1e-6), 0, 1). Returns [P] lengths (BOS = 1)."""
    sub, space = _ends(patch_lens), _ends(space_lens)
    r_sub = n_bytes / max(len(sub), 1)
    r_space = n_bytes / max(len(space), 1)
    u = min(max((ratio - r_sub) / max(r_space - r_sub, 1e-6), 0.0), 1.0)
    sub_only, space_only = sorted(sub - space), sorted(space - sub)
    chosen = (sub & space) | {0}
    chosen |= set(rng.choice(sub_only, int((1 - u) * len(sub_only)), replace=False).tolist()) if sub_only else set()
    chosen |= set(rng.choice(space_only, int(u * len(space_only)), replace=False).tolist()) if space_only else set()
    ends = np.asarray(sorted(chosen), np.int64)
    lens = np.diff(np.concatenate([[-1], ends]))[: len(patch_lens)]
    out = np.zeros(len(patch_lens), np.int64)
    out[:len(lens)] = lens
    return out


def compress_batch(batch: dict[str, torch.Tensor], kind: str, ratio: float, rng: np.random.Generator,
                   skip_boundary_before_eos: bool = True) -> dict[str, torch.Tensor]:
    """A copy of `batch` (from `ByteDataset.batches`, built with `compression=kind`) whose
    patch_lens, boundary_targets and labels follow the compressed patches. Teacher ids are
    dropped: teacher positions no longer align with the patches."""
    labels = batch["labels"]
    n_bytes = (labels != IGNORE_INDEX).sum(1).tolist()
    rows = []
    for b, lens in enumerate(batch["patch_lens"].numpy()):
        if kind == "bpe":
            rows.append(apply_merges(lens, batch["bpe_merges"][b].tolist(), n_bytes[b], ratio))
        elif kind == "space":
            space = batch["space_patch_lens"][b].numpy()
            rows.append(interpolate_space_boundaries(lens, space, n_bytes[b], ratio, rng))
        else:
            raise ConfigError(f"compression kind must be 'bpe' or 'space', got {kind!r}")
    out = {k: v for k, v in batch.items() if not k.startswith("teacher_")}
    out["patch_lens"] = torch.from_numpy(np.stack(rows))
    out["boundary_targets"] = boundary_targets(batch["input_ids"], out["patch_lens"], skip_boundary_before_eos)
    out["labels"] = fuse_labels(labels, out["boundary_targets"])
    return out

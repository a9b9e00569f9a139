"""Training instances from a prepared data directory (see `bolmo.train.prepare` and docs/training.md).

The prepared token stream (every document followed by the teacher's EOS) is cut into windows of
S = `tokens_per_instance` subword ids; each window becomes one instance of L = `seq_len` byte slots
exactly as docs/training-reference.md §1.4-1.7 describes: leading EOS stripped, BOS prepended as a 1-byte
patch, the window's last token skipped (so there are exactly S patches), patches overflowing L
zeroed, bytes padded with 0. Teacher position k aligns with byte patch k.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bolmo.config import BOS_ID, ByteTokenizerConfig
from bolmo.errors import BolmoError, ConfigError
from bolmo.tokenizer import SubwordExpander
from bolmo.train.compression import bpe_merge_positions, space_patch_lens
from bolmo.train.labels import boundary_targets, fuse_labels, next_byte_labels

FORMAT_NAME = "bolmo-prepared-bytes"
FORMAT_VERSION = 1
# Per-shard arrays (.npy files, memory-mapped when read), indexed by byte, token or document.
SHARD_ARRAYS = ("bytes", "boundaries", "expanded", "tokens", "token_offsets", "doc_offsets")


class DataError(BolmoError):
    """An input file or a prepared data directory is missing, unreadable or inconsistent."""


@dataclass
class ByteDataConfig:
    """How instances are cut. Released runs: S = 4096, L = 6 * S = 24,576."""

    tokens_per_instance: int = 4096  # S: teacher positions = patch slots per instance
    seq_len: int | None = None  # L: byte slots per instance; None means 6 * S
    seed: int = 0  # shuffle seed (0 in stage 1, 1234 in stage 2 of the released runs)
    shuffle: bool = True
    skip_boundary_before_eos: bool = True  # the last token of a document and EOS form one patch
    compression: str | None = None  # None, "bpe" (adds bpe_merges) or "space" (adds space_patch_lens)

    def __post_init__(self) -> None:
        if self.seq_len is None:
            self.seq_len = 6 * self.tokens_per_instance
        if self.tokens_per_instance < 2 or self.seq_len < 2:
            raise ConfigError(f"data: tokens_per_instance and seq_len must be >= 2, got "
                              f"{self.tokens_per_instance} and {self.seq_len}")
        if self.compression not in (None, "bpe", "space"):
            raise ConfigError(f"data.compression: must be null, 'bpe' or 'space', got {self.compression!r}")


class _Shard:
    def __init__(self, directory: Path) -> None:
        self.arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in SHARD_ARRAYS}
        self.num_tokens = len(self.arrays["tokens"])


class ByteDataset:
    """Fixed-size instances from a prepared directory, shuffled by seed, split over ranks.

    `dataset[i]` builds instance i (a dict of tensors, see `instance`). Iteration follows the
    epoch's seeded permutation; rank r takes every `world_size`-th index from r, so each global
    batch (`batch_size * world_size` consecutive permutation entries) is split without overlap.
    `state_dict()` records how many permutation entries all ranks together have consumed, so a
    resumed run (even with another world size dividing that count) continues exactly.
    """

    def __init__(self, data_dir: str | Path, config: ByteDataConfig | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        self.data_dir = Path(data_dir)
        self.config = config or ByteDataConfig()
        if not 0 <= rank < world_size:
            raise ConfigError(f"data: rank {rank} is not in [0, world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        self.meta = read_meta(self.data_dir)
        self.eos_s = int(self.meta["tokenizer"]["eos_id"])
        self.pad_s = int(self.meta["tokenizer"]["pad_id"])
        self.shards = [_Shard(self.data_dir / s["name"]) for s in self.meta["shards"]]
        self.shard_starts = np.cumsum([0] + [s.num_tokens for s in self.shards])
        self.expander = SubwordExpander.from_directory(self.data_dir / "tokenizer", ByteTokenizerConfig())
        self.epoch = 0
        self.consumed = 0  # permutation entries of this epoch handed out, over all ranks

    def __len__(self) -> int:
        return int(self.shard_starts[-1]) // self.config.tokens_per_instance

    def _gather(self, start: int, stop: int, with_bytes: bool = True) -> dict[str, np.ndarray]:
        """Token-stream span [start, stop) -> its tokens, and unless told otherwise its byte
        lengths, bytes and expansions (the span may cross shards)."""
        parts: dict[str, list[np.ndarray]] = {"tokens": [], "lens": [], "bytes": [], "expanded": []}
        first = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        for s in range(first, len(self.shards)):
            lo, hi = max(start, self.shard_starts[s]), min(stop, self.shard_starts[s + 1])
            if lo >= hi:
                break
            a = self.shards[s].arrays
            lo, hi = int(lo - self.shard_starts[s]), int(hi - self.shard_starts[s])
            parts["tokens"].append(a["tokens"][lo:hi].astype(np.int64))
            if not with_bytes:
                continue
            offsets = a["token_offsets"][lo:hi + 1].astype(np.int64)
            parts["lens"].append(np.diff(offsets))
            parts["bytes"].append(a["bytes"][offsets[0]:offsets[-1]].astype(np.int64))
            parts["expanded"].append(a["expanded"][offsets[0]:offsets[-1]].astype(np.int64))
        return {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in parts.items()}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.instance(index)

    def instance(self, index: int) -> dict[str, torch.Tensor]:
        """Instance `index` as tensors: input_ids, expanded_input_ids, labels (fused with the true
        boundaries), boundary_targets [L]; patch_lens [P = S]; teacher_input_ids (teacher input,
        `[EOS_s] + o[:-1]`) and teacher_target_ids (`o`) [S]; plus bpe_merges [S] (padded -1) or
        space_patch_lens [P] when compression is configured; and index (a 0-d tensor)."""
        if not 0 <= index < len(self):
            raise IndexError(f"instance {index} out of range [0, {len(self)})")
        S, L = self.config.tokens_per_instance, self.config.seq_len
        start = index * S
        window = self._gather(start, start + S, with_bytes=False)["tokens"]
        lead = int(np.argmax(window != self.eos_s)) if (window != self.eos_s).any() else S
        o = np.concatenate([window[lead:], np.full(lead, self.pad_s, np.int64)])
        # Patches: BOS, then o[0 .. S-2]; PAD_s fill contributes no bytes (patch length 0).
        real = self._gather(start + lead, start + min(S - 1 + lead, S))
        patch_lens = np.zeros(S, np.int64)
        patch_lens[0] = 1
        patch_lens[1:1 + len(real["lens"])] = real["lens"]
        full_bytes = np.concatenate([[BOS_ID], real["bytes"]])
        patch_lens[np.cumsum(patch_lens) > L] = 0  # overflowing patches (always a suffix)
        n = min(len(full_bytes), L)
        input_ids = np.zeros(L, np.int64)
        input_ids[:n] = full_bytes[:n]
        expanded = np.zeros(L, np.int64)
        expanded[1:n] = real["expanded"][:n - 1]
        # The stored expansion saw the bytes before the window; near the start, the instance
        # (which begins at BOS) must be matched again on its own bytes.
        head = input_ids[:min(n, self.expander.max_len)].tolist()
        expanded[:len(head)] = self.expander.expand(head)

        ids = torch.from_numpy(input_ids).unsqueeze(0)
        lens = torch.from_numpy(patch_lens).unsqueeze(0)
        y = boundary_targets(ids, lens, self.config.skip_boundary_before_eos)
        out = {
            "input_ids": ids[0],
            "expanded_input_ids": torch.from_numpy(expanded),
            "labels": fuse_labels(next_byte_labels(ids), y)[0],
            "boundary_targets": y[0],
            "patch_lens": lens[0],
            "teacher_input_ids": torch.from_numpy(np.concatenate([[self.eos_s], o[:-1]])),
            "teacher_target_ids": torch.from_numpy(o),
            "index": torch.tensor(index),
        }
        if self.config.compression == "bpe":
            rng = np.random.default_rng([self.config.seed, index])
            merges = np.full(S, -1, np.int64)
            found = bpe_merge_positions(o, rng)[:S]
            merges[:len(found)] = found
            out["bpe_merges"] = torch.from_numpy(merges)
        elif self.config.compression == "space":
            space = np.zeros(S, np.int64)
            found = space_patch_lens(full_bytes)[:S]
            space[:len(found)] = found
            space[np.cumsum(space) > L] = 0
            out["space_patch_lens"] = torch.from_numpy(space)
        return out

    def _permutation(self, epoch: int) -> np.ndarray:
        n = len(self)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(n) if self.config.shuffle else np.arange(n)
        return order[: n - n % self.world_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the current epoch, one instance at a time; then the next epoch starts."""
        order = self._permutation(self.epoch)
        while self.consumed < len(order):
            index = int(order[self.consumed + self.rank])
            self.consumed += self.world_size
            yield self.instance(index)
        self.epoch, self.consumed = self.epoch + 1, 0

    def batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Endless stacked batches of `batch_size` instances for this rank, epoch after epoch.
        The data position advances when a batch is handed out; an epoch's tail shorter than a
        global batch is skipped so that every rank takes the same number of steps."""
        if batch_size < 1:
            raise ConfigError(f"data: batch_size must be >= 1, got {batch_size}")
        step = batch_size * self.world_size
        if len(self) < step:
            raise DataError(f"{self.data_dir}: {len(self)} instances, fewer than one global batch ({step})")
        while True:
            order = self._permutation(self.epoch)
            usable = len(order) - len(order) % step
            while self.consumed + step <= usable:
                chosen = order[self.consumed + self.rank:self.consumed + step:self.world_size]
                self.consumed += step
                yield collate([self.instance(int(i)) for i in chosen])
            self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.config.seed,
                "num_instances": len(self), "tokens_per_instance": self.config.tokens_per_instance}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seed", self.config.seed), ("num_instances", len(self)),
                          ("tokens_per_instance", self.config.tokens_per_instance)):
            if state[key] != mine:
                raise DataError(f"{self.data_dir}: data state has {key}={state[key]}, but this dataset has "
                                f"{mine}; resuming would not continue the same order")
        if state["consumed"] % self.world_size:
            raise DataError(f"data state: {state['consumed']} consumed instances cannot be split over "
                            f"world_size {self.world_size}")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])


def collate(instances: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack instances (all fields have fixed shapes) into a batch."""
    return {key: torch.stack([inst[key] for inst in instances]) for key in instances[0]}


def read_meta(data_dir: Path) -> dict[str, Any]:
    file = data_dir / "meta.json"
    if not file.is_file():
        raise DataError(f"{data_dir}: no meta.json; run `bolmo prepare ... --out {data_dir}` (to completion)")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
        raise DataError(f"{file}: format {meta.get('format')!r} version {meta.get('version')!r}, expected "
                        f"{FORMAT_NAME!r} version {FORMAT_VERSION}")
    return meta

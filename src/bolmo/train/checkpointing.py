"""Training checkpoints in the OLMo-core layout, exact resumption, and the final HF export.

    <run_dir>/step<N>/config.json        OLMo-core experiment config ({"model", "dataset"}), plus
                                         the trainer config under "bolmo_train"
    <run_dir>/step<N>/model_and_optim/   torch.distributed.checkpoint: `model.<name>` and the
                                         flattened AdamW state `optim.state.<name>.<field>`,
                                         `optim.param_groups.<name>.<field>`, under native
                                         OLMo-core names; sharded when the run was
    <run_dir>/step<N>/train/rank<r>.pt   per rank: step, data position, RNG states
    <run_dir>/step<N>/<tokenizer>        the subword tokenizer, so the directory loads by itself
    <run_dir>/latest                     "step<N>", rewritten last

Because of that layout, `bolmo.load(<run_dir>/step<N>)` loads a Bolmo checkpoint and
`bolmo convert` converts it. One difference from OLMo-core's own files: the byte embedding and
LM head are stored with the tokenizer's 520 rows (config `model.vocab_size` says so) rather than
padded to 640.

A step directory is written under a temporary name and renamed when complete; `latest` is
replaced atomically afterwards, so a run killed at any moment resumes from the last complete
checkpoint. Older step directories beyond `keep` are deleted after that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from bolmo.version import __version__
from bolmo.checkpoint import keymaps
from bolmo.checkpoint.atomic import atomic_directory
from bolmo.checkpoint.config_maps import hf_to_olmo_core
from bolmo.checkpoint.convert import check_written, write_hf_config
from bolmo.checkpoint.layout import DCP_SUBDIR
from bolmo.checkpoint.safetensors_io import DEFAULT_SHARD_SIZE, write_weights
from bolmo.errors import CheckpointError
from bolmo.olmo.config import OlmoConfig
from bolmo.tokenizer import SUBWORD_TOKENIZER_DIR, SUBWORD_TOKENIZER_FILES
from bolmo.train.distributed import Dist

LATEST = "latest"
MODEL_PREFIX = "model."  # TrainModule.model: what is saved (the teacher's parts are not)
_STEP_DIR = re.compile(r"^step(\d+)$")
_OPTIM = StateDictOptions(flatten_optimizer_state_dict=True)


# ----------------------------------------------------------------------------- model description

@dataclasses.dataclass
class ModelDescription:
    """What a checkpoint or export must say about the trained model besides its tensors."""

    family: str  # "bolmo" or "olmo" (keymaps naming)
    hf_config: dict[str, Any]  # config.json of the HF export
    tokenizer_src: Path  # the subword tokenizer directory
    tokenizer_dir: str  # where it goes inside a checkpoint / export ("" = the directory itself)

    @classmethod
    def of(cls, model: nn.Module, tokenizer_src: Path, trained_positions: int | None = None) -> "ModelDescription":
        """`trained_positions`: the sequence length trained on (byte slots for Bolmo, tokens for a
        subword model). The written config's max_position_embeddings is raised to it when smaller (a Bolmo
        byteified from a short-context teacher starts with the teacher's token count, but has been
        trained on longer byte windows: prompt cuts and scoring windows follow this field)."""
        config = model.config
        if trained_positions is not None and config.max_position_embeddings < trained_positions:
            config = dataclasses.replace(config, max_position_embeddings=trained_positions)
        if isinstance(config, OlmoConfig):
            return cls("olmo", config.to_dict(), tokenizer_src, "")
        identifier = config.tokenizer_config.original_identifier or ""
        if not identifier or Path(identifier).is_absolute() or ".." in Path(identifier).parts:
            identifier = SUBWORD_TOKENIZER_DIR  # bundle it under a relative name the loader finds
            config = dataclasses.replace(
                config, tokenizer_config=dataclasses.replace(config.tokenizer_config, original_identifier=identifier))
        return cls("bolmo", config.to_dict(), tokenizer_src, identifier)

    def olmo_core_config(self) -> dict[str, Any]:
        out = hf_to_olmo_core(self.hf_config, "trained model config")
        if self.family == "bolmo":
            out["model"]["vocab_size"] = self.hf_config["vocab_size"]  # tables stored unpadded
        return out

    def write_side_files(self, directory: Path) -> None:
        target = directory / self.tokenizer_dir
        target.mkdir(parents=True, exist_ok=True)
        for name in SUBWORD_TOKENIZER_FILES:
            if (self.tokenizer_src / name).is_file():
                shutil.copyfile(self.tokenizer_src / name, target / name)

    def native(self, fqn: str) -> str:
        name = keymaps.rename(fqn, self.family, to_hf=False)
        if name is None:
            raise CheckpointError(f"parameter {fqn} has no OLMo-core name in the {self.family} key map")
        return name

    def hf(self, native: str) -> str:
        return keymaps.rename(native, self.family, to_hf=True)


# ----------------------------------------------------------------------------- state dicts

def _model_state(root: nn.Module, desc: ModelDescription) -> dict[str, torch.Tensor]:
    """The trained model's (possibly sharded) tensors under native names."""
    state = get_model_state_dict(root)
    return {desc.native(k[len(MODEL_PREFIX):]): v for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def _rename_optim(state: dict[str, Any], rename) -> dict[str, Any]:
    """Flattened optimizer keys `state.<fqn>.<field>` / `param_groups.<fqn>.<field>` renamed."""
    out = {}
    for key, value in state.items():
        section, rest = key.split(".", 1)
        fqn, fld = rest.rsplit(".", 1)
        out[f"{section}.{rename(fqn)}.{fld}"] = value
    return out


def _optim_state(root: nn.Module, optimizer: torch.optim.Optimizer, desc: ModelDescription) -> dict[str, Any]:
    state = get_optimizer_state_dict(root, optimizer, options=_OPTIM)
    return _rename_optim(state, lambda fqn: desc.native(fqn[len(MODEL_PREFIX):]))


def _rng_state() -> dict[str, Any]:
    """RNG states as plain Python values and tensors (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------- checkpoints

@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every single-process save/load that it assumes a single process; it is right."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class Checkpointer:
    def __init__(self, run_dir: str | Path, dist: Dist, desc: ModelDescription, train_config: dict[str, Any],
                 keep: int) -> None:
        self.run_dir, self.dist, self.desc, self.keep = Path(run_dir), dist, desc, keep
        self.config_json = {**desc.olmo_core_config(), "bolmo_train": train_config}  # fails early if inexpressible

    def steps(self) -> list[int]:
        found = [int(m.group(1)) for p in self.run_dir.glob("step*") if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
        return sorted(found)

    def latest(self) -> Path | None:
        marker = self.run_dir / LATEST
        if not marker.is_file():
            return None
        path = self.run_dir / marker.read_text().strip()
        aside = self.run_dir / f".{path.name}.old.tmp"
        if not path.exists() and (aside / DCP_SUBDIR / ".metadata").is_file():
            try:  # a run killed while replacing this step: the previous copy comes back
                aside.rename(path)
            except OSError:  # another rank put it back first
                pass
        if not (path / DCP_SUBDIR / ".metadata").is_file():
            raise CheckpointError(f"{marker} names {path.name}, which is not a complete checkpoint")
        return path

    def remove_partial(self) -> None:
        """Temporary directories of checkpoints that a killed run left behind (rank 0)."""
        if self.dist.is_main:
            for stale in self.run_dir.glob(".step*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)

    def save(self, step: int, root: nn.Module, optimizer: torch.optim.Optimizer, data_state: dict[str, Any]) -> Path:
        final = self.run_dir / f"step{step}"
        tmp = self.run_dir / f".step{step}.tmp"
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.dist.barrier()
        with _single_process_quiet():
            dcp.save({"model": _model_state(root, self.desc), "optim": _optim_state(root, optimizer, self.desc)},
                     checkpoint_id=tmp / DCP_SUBDIR, no_dist=not self.dist.active)
        (tmp / "train").mkdir(exist_ok=True)
        torch.save({"step": step, "data": data_state, "rng": _rng_state(), "world_size": self.dist.world_size},
                   tmp / "train" / f"rank{self.dist.rank}.pt")
        self.dist.barrier()
        if self.dist.is_main:
            (tmp / "config.json").write_text(json.dumps(self.config_json, indent=2) + "\n")
            self.desc.write_side_files(tmp)
            # OLMo-core's completeness marker, written last: without it readers call the save interrupted.
            (tmp / ".metadata.json").write_text(json.dumps({"ephemeral": False, "version": f"bolmo {__version__}"}) + "\n")
            aside = self.run_dir / f".{final.name}.old.tmp"
            if final.exists():  # the same step saved again after a resume: two renames, then delete
                shutil.rmtree(aside, ignore_errors=True)
                final.rename(aside)  # a kill before the next line is undone by `latest` (see there)
            tmp.rename(final)
            shutil.rmtree(aside, ignore_errors=True)
            marker = self.run_dir / f".{LATEST}.tmp"
            marker.write_text(final.name + "\n")
            os.replace(marker, self.run_dir / LATEST)
            for old in self.steps()[:-self.keep]:
                if old != step:
                    shutil.rmtree(self.run_dir / f"step{old}", ignore_errors=True)
        self.dist.barrier()
        return final

    def load(self, path: Path, root: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Restore model, optimizer and this rank's RNG states in place; returns the trainer
        state (step, data position). A rank without its own file (the world size changed)
        takes rank 0's data position; its RNG streams then start from rank 0's."""
        model_state = _model_state(root, self.desc)
        optim_state = _optim_state(root, optimizer, self.desc)
        with _single_process_quiet():
            dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=path / DCP_SUBDIR,
                     no_dist=not self.dist.active)
        set_model_state_dict(root, {MODEL_PREFIX + self.desc.hf(k): v for k, v in model_state.items()},
                             options=StateDictOptions(strict=False))
        set_optimizer_state_dict(root, optimizer, _rename_optim(optim_state, lambda n: MODEL_PREFIX + self.desc.hf(n)),
                                 options=_OPTIM)
        own = path / "train" / f"rank{self.dist.rank}.pt"
        file = own if own.is_file() else path / "train" / "rank0.pt"
        try:
            state = torch.load(file, weights_only=True)
        except Exception as exc:  # missing, unreadable, truncated or not a weights-only archive
            raise CheckpointError(f"{file}: cannot read the trainer state to resume from "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        _set_rng_state(state["rng"])
        return state


# ----------------------------------------------------------------------------- export

def export_hf(root: nn.Module, desc: ModelDescription, out: str | Path, dist: Dist,
              shard_size: int = DEFAULT_SHARD_SIZE) -> Path | None:
    """Write the trained model as an HF directory (config.json, safetensors weights, subword
    tokenizer) that `bolmo.load` reads, with `bolmo convert`'s writer: sharded, checked after
    writing, atomic. All ranks call it; rank 0 writes. Tensors are gathered one at a time (a
    collective every rank joins, in the same order), so no process holds the whole model."""
    state = {k[len(MODEL_PREFIX):]: v for k, v in get_model_state_dict(root).items() if k.startswith(MODEL_PREFIX)}
    entries = [(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in sorted(state.items())]

    def gathered(name: str) -> list[torch.Tensor]:
        tensor = state[name]
        return [(tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().cpu()]

    out = Path(out)
    if dist.is_main:
        with atomic_directory(out, overwrite=True) as tmp:
            write_weights(tmp, entries, gathered, shard_size)
            write_hf_config(tmp, desc.hf_config)
            desc.write_side_files(tmp)
            check_written(tmp, {name: (shape, dtype) for name, dtype, shape in entries})
    else:
        for name, _, _ in entries:  # join rank 0's gathers
            gathered(name)
    dist.barrier()
    return out if dist.is_main else None

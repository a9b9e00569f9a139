"""Convert checkpoints between OLMo-core / generic DCP and HF safetensors, streaming tensor by tensor.

Two phases. `plan_conversion` reads only metadata and configs: it picks the key map, works out
every output name, shape and dtype, checks them against the model the config describes, and
raises before anything is written. `execute` then reads one tensor, transforms it, appends it to
the output and drops it, so peak memory is about the largest tensor (plus one chunk while a
sharded tensor is assembled), never the model. The output directory appears atomically.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from bolmo.checkpoint import keymaps
from bolmo.checkpoint.atomic import atomic_directory, check_destination
from bolmo.checkpoint.config_maps import hf_to_olmo_core, olmo_core_to_hf
from bolmo.checkpoint.dcp_reader import DCPCheckpoint
from bolmo.checkpoint.dcp_writer import DCPWriter
from bolmo.checkpoint.expected import expected_hf_shapes
from bolmo.checkpoint.inventory import TensorInfo, differences, dtype_name
from bolmo.checkpoint.safetensors_io import SafetensorsWriter, plan_shards, shard_names, write_index
from bolmo.checkpoint.sources import DCP_SUBDIR, Source, SourceKind, open_checkpoint
from bolmo.errors import CheckpointError

Progress = Callable[[str, int], None]  # (tensor name, bytes written) after each tensor


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # in the output
    source: str  # in the source reader
    shape: tuple[int, ...]  # in the output
    dtype: torch.dtype  # in the output
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class ConversionPlan:
    source: Source
    target: str  # "hf" or "olmo-core"
    tensors: list[PlannedTensor]
    config: dict[str, Any] | None  # config.json to write
    tokenizer_dir: Path | None = None  # subword tokenizer directory to copy beside the weights
    warnings: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def produce_rows(self, planned: PlannedTensor) -> Iterator[torch.Tensor]:
        """The output tensor as row blocks: a sharded DCP tensor streams chunk by chunk, never assembled."""
        if planned.transform is None and isinstance(self.source.reader, DCPCheckpoint):
            for rows in self.source.reader.read_rows(planned.source):
                yield rows.to(planned.dtype)
        else:
            yield self.produce(planned)

    def produce(self, planned: PlannedTensor) -> torch.Tensor:
        """Read one source tensor and turn it into the output tensor."""
        tensor = self.source.reader.read_tensor(planned.source)
        if planned.transform is not None:
            tensor = planned.transform(tensor)
        tensor = tensor.to(planned.dtype)
        if tuple(tensor.shape) != planned.shape:
            raise CheckpointError(f"{self.source.path}: {planned.source} has shape {list(tensor.shape)}, "
                                  f"expected {list(planned.shape)}")
        return tensor


@dataclass
class ConversionResult:
    destination: Path
    plan: ConversionPlan
    files: list[str]
    seconds: float


# ---------------------------------------------------------------------------------- planning
def plan_conversion(src: str | Path, to: str, prefix: str = "model", dtype: torch.dtype | None = None,
                    key_map: dict[str, str] | None = None) -> ConversionPlan:
    """Everything about the conversion that can be known without reading tensor data."""
    source = open_checkpoint(src)
    source.reader.check()
    if to == "hf":
        plan = _plan_dcp_to_hf(source, prefix) if source.is_dcp else _plan_hf_to_hf(source)
    elif to == "olmo-core":
        if source.kind not in (SourceKind.HF_BOLMO, SourceKind.HF_OLMO):
            raise CheckpointError(f"{source.path}: {source.kind.value} checkpoints cannot be converted to "
                                  "olmo-core (only HF Bolmo / Olmo2 / Olmo3 directories can)")
        plan = _plan_hf_to_olmo_core(source)
    else:
        raise CheckpointError(f"unknown target format {to!r} (hf or olmo-core)")
    if key_map:
        renamed = keymaps.apply_rename_file([t.name for t in plan.tensors], key_map, "--key-map")
        plan.tensors = [replace(t, name=renamed[t.name]) for t in plan.tensors]
    if dtype is not None:
        plan.tensors = [replace(t, dtype=dtype) if t.dtype.is_floating_point else t for t in plan.tensors]
        _set_config_dtype(plan, dtype)
    plan.tensors.sort(key=lambda t: t.name)
    return plan


def _plan_dcp_to_hf(source: Source, prefix: str) -> ConversionPlan:
    reader = source.reader
    where = str(reader.path)
    inventory = reader.inventory()
    selected = {name[len(prefix) + 1:]: info for name, info in inventory.items() if name.startswith(prefix + ".")}
    tensors = {name: info for name, info in selected.items() if info.is_tensor}
    if not tensors:
        available = ", ".join(f"{p} ({n})" for p, n in reader.prefixes().items()) or "none"
        raise CheckpointError(f"{where}: no tensors under '{prefix}.'; available prefixes: {available}")
    warnings = [f"skipped non-tensor item {prefix}.{name}" for name, info in selected.items() if not info.is_tensor]
    if source.family is None:
        names = {name: name for name in tensors}
        config = None
        if prefix != "model" and "model" in reader.prefixes():
            model_names = {n[len("model."):] for n, i in inventory.items() if n.startswith("model.") and i.is_tensor}
            missing = sorted(model_names - set(tensors))
            if missing:
                warnings.append(f"'{prefix}' lacks {len(missing)} tensor(s) that 'model' has "
                                f"(buffers?): {', '.join(missing[:10])}")
    else:
        names = keymaps.rename_all(list(tensors), source.family, to_hf=True, where=where)
        subword = tensors.get("local_encoder.expanded_embeddings.weight")
        config = olmo_core_to_hf(source.config, str(source.config_path), subword.shape[0] if subword else None)
    padding = _vocab_padding(source, config)
    planned = []
    for name, info in tensors.items():
        out, shape, transform = names[name], info.shape, None
        if padding and out in keymaps.BOLMO_VOCAB_ROWS_HF:
            _check_rows(info, padding.native_rows, where)
            shape, transform = padding.hf_shape(info.shape), padding.to_hf
        planned.append(PlannedTensor(out, f"{prefix}.{name}", shape, info.dtype, transform))
    plan = ConversionPlan(source, "hf", planned, config, _find_tokenizer(source, config), warnings)
    if config is not None:
        _check_against_model({t.name: t.shape for t in planned}, config, where)
    return plan


def _plan_hf_to_hf(source: Source) -> ConversionPlan:
    planned = [PlannedTensor(name, name, info.shape, info.dtype) for name, info in source.reader.inventory().items()]
    config = dict(source.config) if source.config else None
    plan = ConversionPlan(source, "hf", planned, config, _find_tokenizer(source, config))
    if source.family is not None:  # a Bolmo / Olmo2 / Olmo3 config; other configs are copied unchecked
        _check_against_model({t.name: t.shape for t in planned}, config, str(source.path))
    return plan


def _plan_hf_to_olmo_core(source: Source) -> ConversionPlan:
    where = str(source.path)
    inventory = source.reader.inventory()
    plan = ConversionPlan(source, "olmo-core", [], hf_to_olmo_core(source.config, str(source.config_path)))
    _check_against_model({name: info.shape for name, info in inventory.items()}, source.config, where)
    names = keymaps.rename_all(list(inventory), source.family, to_hf=False, where=where)
    padding = _vocab_padding(source, source.config, plan.config)
    for name, info in inventory.items():
        shape, transform = info.shape, None
        if padding and name in keymaps.BOLMO_VOCAB_ROWS_HF:
            _check_rows(info, padding.hf_rows, where)
            shape, transform = padding.native_shape(info.shape), padding.to_native
        plan.tensors.append(PlannedTensor(f"model.{names[name]}", name, shape, info.dtype, transform))
    plan.tokenizer_dir = _find_tokenizer(source, source.config)
    return plan


def _vocab_padding(source: Source, hf_config: dict[str, Any] | None,
                   olmo_core_config: dict[str, Any] | None = None) -> keymaps.VocabPadding | None:
    if source.family != "bolmo" or hf_config is None:
        return None
    native = (olmo_core_config or source.config)["model"]["vocab_size"]
    return keymaps.VocabPadding(hf_rows=hf_config["vocab_size"], native_rows=native)


def _check_rows(info: TensorInfo, rows: int, where: str) -> None:
    if not info.shape or info.shape[0] != rows:
        raise CheckpointError(f"{where}: {info.name} has shape {list(info.shape)}, the config's vocabulary "
                              f"needs {rows} rows (native checkpoints pad the 520-entry vocabulary to 640)")


def _check_against_model(found: dict[str, tuple[int, ...]], hf_config: dict[str, Any], where: str) -> None:
    """Fail, listing every difference, unless the tensors are exactly what the config's model needs."""
    expected = expected_hf_shapes(hf_config, where)
    problems = differences({k: (v,) for k, v in found.items()}, {k: (v,) for k, v in expected.items()},
                           "checkpoint", "model built from config")
    if problems:
        raise CheckpointError(f"{where}: tensors do not match the model its config describes:\n  " + "\n  ".join(problems))


def _set_config_dtype(plan: ConversionPlan, dtype: torch.dtype) -> None:
    if plan.config is None:
        return
    if plan.target == "hf":
        plan.config["dtype"] = dtype_name(dtype)
        plan.config.pop("torch_dtype", None)
    else:
        plan.config["model"]["dtype"] = dtype_name(dtype)


def _find_tokenizer(source: Source, hf_config: dict[str, Any] | None) -> Path | None:
    """The Bolmo subword tokenizer directory shipped with the source, if any: the one its config
    names (relative to the checkpoint), else a subdirectory holding a tokenizer.json."""
    if source.family != "bolmo" or hf_config is None:
        return None
    identifier = (hf_config.get("tokenizer_config") or {}).get("original_identifier") or ""
    named = source.root / identifier
    if identifier and (named / "tokenizer.json").is_file():
        return named
    found = sorted(p.parent for p in source.root.glob("*/tokenizer.json") if p.parent.name != DCP_SUBDIR)
    return found[0] if found else None


# ---------------------------------------------------------------------------------- execution
def execute(plan: ConversionPlan, dst: str | Path, overwrite: bool = False, shard_size: int = 5 * 10**9,
            verify_against: str | Path | None = None, progress: Progress | None = None) -> ConversionResult:
    """Write the planned checkpoint to `dst` (atomically) and check what was written."""
    start = time.perf_counter()
    dst = Path(dst)
    if dst.absolute() == plan.source.path.absolute():
        raise CheckpointError(f"{dst}: the destination is the source")
    with atomic_directory(dst, overwrite) as tmp:
        config = _relocate_tokenizer(plan, tmp)
        if plan.target == "hf":
            _write_hf(plan, tmp, shard_size, progress)
        else:
            _write_olmo_core(plan, tmp, progress)
        if config is not None:
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _check_written(plan, tmp)
        if verify_against is not None:
            compare_with_reference(tmp, Path(verify_against), dst)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return ConversionResult(dst, plan, files, time.perf_counter() - start)


def _relocate_tokenizer(plan: ConversionPlan, out: Path) -> dict[str, Any] | None:
    """Copy the subword tokenizer beside the weights and point the config at it (relative name)."""
    if plan.tokenizer_dir is None or plan.config is None:
        return plan.config
    for file in sorted(plan.tokenizer_dir.rglob("*")):
        if file.is_file():  # file contents only: copied permissions (read-only fixtures) would stick
            target = out / plan.tokenizer_dir.name / file.relative_to(plan.tokenizer_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    config = json.loads(json.dumps(plan.config))
    tokenizer = config["tokenizer_config"] if plan.target == "hf" else config["dataset"]["tokenizer"]
    tokenizer["original_identifier"] = plan.tokenizer_dir.name
    return config


def _write_hf(plan: ConversionPlan, out: Path, shard_size: int, progress: Progress | None) -> None:
    by_name = {t.name: t for t in plan.tensors}
    shards = plan_shards([(t.name, t.nbytes) for t in plan.tensors], shard_size)
    weight_map = {}
    for file, names in zip(shard_names(len(shards)), shards):
        entries = [(n, by_name[n].dtype, by_name[n].shape) for n in names]
        with SafetensorsWriter(out / file, entries) as writer:
            for name in names:
                writer.write(name, plan.produce_rows(by_name[name]))
                weight_map[name] = file
                if progress:
                    progress(name, by_name[name].nbytes)
    if len(shards) > 1:
        write_index(out, weight_map, plan.total_bytes)


def _write_olmo_core(plan: ConversionPlan, out: Path, progress: Progress | None) -> None:
    with DCPWriter(out / DCP_SUBDIR) as writer:
        for planned in plan.tensors:
            writer.add(planned.name, plan.produce(planned))
            if progress:
                progress(planned.name, planned.nbytes)


def _check_written(plan: ConversionPlan, out: Path) -> None:
    """Re-open the output from its headers/metadata: every planned tensor, nothing else, as planned."""
    reader = open_checkpoint(out).reader
    reader.check()
    found = {n: (i.shape, i.dtype) for n, i in reader.inventory().items()}
    problems = differences(found, {t.name: (t.shape, t.dtype) for t in plan.tensors}, "output", "plan")
    if problems:
        raise CheckpointError(f"{out}: written checkpoint differs from the plan:\n  " + "\n  ".join(problems))


def compare_with_reference(out: Path, reference: Path, label: Path) -> None:
    """--verify-against: same tensor count, names, shapes and dtypes as a reference HF directory."""
    ref = open_checkpoint(reference).reader
    ref.check()
    mine = open_checkpoint(out).reader
    problems = differences({n: (i.shape, i.dtype) for n, i in mine.inventory().items() if i.is_tensor},
                           {n: (i.shape, i.dtype) for n, i in ref.inventory().items() if i.is_tensor},
                           str(label), str(reference))
    if problems:
        raise CheckpointError(f"{label}: output differs from the reference {reference} "
                              f"({len(problems)} difference(s)); nothing was written:\n  " + "\n  ".join(problems))


def convert(src: str | Path, dst: str | Path, to: str, *, prefix: str = "model", dtype: torch.dtype | None = None,
            key_map: dict[str, str] | None = None, shard_size: int = 5 * 10**9, overwrite: bool = False,
            verify_against: str | Path | None = None, progress: Progress | None = None) -> ConversionResult:
    """Plan and execute in one call (see `bolmo convert --help`)."""
    check_destination(Path(dst).absolute(), overwrite)
    plan = plan_conversion(src, to, prefix=prefix, dtype=dtype, key_map=key_map)
    return execute(plan, dst, overwrite=overwrite, shard_size=shard_size, verify_against=verify_against,
                   progress=progress)

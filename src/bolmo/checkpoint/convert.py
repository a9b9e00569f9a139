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
from bolmo.checkpoint.expected import expected_hf_tensors
from bolmo.checkpoint.layout import DCP_SUBDIR
from bolmo.checkpoint.inventory import (
    SAFETENSORS_CODES,
    TensorInfo,
    check_finite,
    differences,
    dtype_name,
    listed,
    parse_dtype,
    stored_suffix,
)
from bolmo.checkpoint.safetensors_io import DEFAULT_SHARD_SIZE, parse_size, write_weights
from bolmo.checkpoint.sources import Source, SourceKind, bundled_or_path, open_checkpoint
from bolmo.errors import CheckpointError, ConfigError
from bolmo.tokenizer import SUBWORD_TOKENIZER_FILES

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
    prefix: str | None = None  # the DCP top-level key the weights come from ('' = every tensor); None for HF
    from_model: list[str] = field(default_factory=list)  # output names taken from 'model' (what the EMA does not track)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def produce_rows(self, planned: PlannedTensor) -> Iterator[torch.Tensor]:
        """The output tensor as row blocks: a sharded DCP tensor streams chunk by chunk, never assembled."""
        if planned.transform is None and isinstance(self.source.reader, DCPCheckpoint):
            for rows in self.source.reader.read_rows(planned.source):
                yield self.cast(planned, rows)
        else:
            yield self.produce(planned)

    def checked(self, planned: PlannedTensor, values: torch.Tensor) -> torch.Tensor:
        """`values` (of `planned`), refusing NaN or infinite values in a model's weights, which
        `bolmo.load` would refuse. A generic DCP checkpoint has no model: its tensors (a -inf mask
        buffer, say) are copied as they are."""
        if self.source.family is not None:
            check_finite(values, planned.name, str(self.source.path),
                         stored_suffix(planned.name, {planned.name: planned.source}))
        return values

    def cast(self, planned: PlannedTensor, values: torch.Tensor) -> torch.Tensor:
        """`values` in the output dtype; a model weight whose finite values the cast would turn
        into infinities (--dtype float16 and |x| > 65504) is refused naming the cast, not as a
        source that holds infinite values."""
        out = values.to(planned.dtype)
        narrowing = (out.is_floating_point() and values.is_floating_point()
                     and torch.finfo(out.dtype).max < torch.finfo(values.dtype).max)  # float16, float8: not bfloat16
        if (self.source.family is not None and narrowing
                and not bool(torch.isfinite(out).all()) and bool(torch.isfinite(values).all())):
            name, suffix = dtype_name(out.dtype), stored_suffix(planned.name, {planned.name: planned.source})
            raise CheckpointError(
                f"{self.source.path}: tensor {planned.name!r}{suffix} has values beyond {name}'s range (largest |x| "
                f"{values.abs().max().item():g}, {name} holds up to {torch.finfo(out.dtype).max:g}): the cast would "
                "make them infinite")
        return out

    def checked_rows(self, planned: PlannedTensor) -> Iterator[torch.Tensor]:
        """`produce_rows`, each row block `checked`."""
        return (self.checked(planned, rows) for rows in self.produce_rows(planned))

    def produce(self, planned: PlannedTensor) -> torch.Tensor:
        """Read one source tensor and turn it into the output tensor."""
        tensor = self.source.reader.read_tensor(planned.source)
        if planned.transform is not None:
            tensor = planned.transform(tensor)
        tensor = self.cast(planned, tensor)
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
def plan_conversion(src: str | Path, to: str, prefix: str | None = None, dtype: torch.dtype | str | None = None,
                    key_map: dict[str, str] | None = None, allow_missing: bool = False,
                    verify_against: str | Path | None = None) -> ConversionPlan:
    """Everything about the conversion that can be known without reading tensor data.

    `prefix`: the DCP top-level key holding the weights (default `model`; '' = every tensor, names
    unchanged); refused for HF sources, which have no such keys. `verify_against`: an HF directory or
    safetensors file the output must match in tensor names, shapes and dtypes, checked here."""
    dtype = _output_dtype(dtype)
    source = open_checkpoint(src)
    source.reader.check()
    if prefix is not None and not source.is_dcp:
        raise CheckpointError(f"{source.path}: --prefix/--ema pick a top-level key of a DCP checkpoint; "
                              f"HF weights ({source.kind.value}) have none")
    if allow_missing and prefix in (None, "model"):
        raise CheckpointError("--allow-missing applies to --prefix/--ema (weights other than 'model' that may lack "
                              "some of its trained parameters); nothing would be missing here")
    if verify_against is not None and to != "hf":
        raise CheckpointError(f"--verify-against compares with HF tensors (names, shapes, dtypes): it needs --to hf, "
                              f"not --to {to}")
    reference = _reference_tensors(Path(verify_against)) if verify_against is not None else None
    if to == "hf":
        plan = (_plan_dcp_to_hf(source, "model" if prefix is None else prefix, allow_missing) if source.is_dcp
                else _plan_hf_to_hf(source))
    elif to == "olmo-core":
        if source.kind not in (SourceKind.HF_BOLMO, SourceKind.HF_OLMO):
            raise CheckpointError(f"{source.path}: {source.kind.value} checkpoints cannot be converted to "
                                  "olmo-core (only HF Bolmo / Olmo2 / Olmo3 directories can)")
        plan = _plan_hf_to_olmo_core(source)
    else:
        raise CheckpointError(f"unknown target format {to!r} (hf or olmo-core)")
    if key_map:
        if plan.config is not None:  # the model's names are fixed: renaming one breaks the checkpoint
            raise CheckpointError(f"{source.path}: --key-map renames the tensors of checkpoints without a model "
                                  f"config (generic DCP); this {source.kind.value} checkpoint's names are its model's")
        renamed = keymaps.apply_rename_file([t.name for t in plan.tensors], key_map, "--key-map")
        plan.tensors = [replace(t, name=renamed[t.name]) for t in plan.tensors]
    if dtype is not None:
        plan.tensors = [replace(t, dtype=dtype) if t.dtype.is_floating_point else t for t in plan.tensors]
        _set_config_dtype(plan, dtype)
    if plan.target == "hf":
        _check_safetensors_dtypes(plan)
    plan.tensors.sort(key=lambda t: t.name)
    if reference is not None:
        _compare_with_reference(plan, reference, Path(verify_against))
    return plan


def _output_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """`dtype` as a torch floating-point dtype (a name such as 'bfloat16' is accepted): a model's
    weights cast to an integer type would be written and then refused by every loader."""
    if isinstance(dtype, str):
        dtype = parse_dtype(dtype, "dtype")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise CheckpointError(f"dtype {dtype!r}: the output dtype must be a floating-point type "
                              "(float32, bfloat16, float16)")
    return dtype


def _check_safetensors_dtypes(plan: ConversionPlan) -> None:
    """safetensors has no code for some torch dtypes (complex128, float8_e8m0fnu, ...): refuse them
    while planning, not halfway through writing the output."""
    bad = [f"{t.source} ({dtype_name(t.dtype)})" for t in plan.tensors if t.dtype not in SAFETENSORS_CODES]
    if bad:
        raise CheckpointError(f"{plan.source.path}: {len(bad)} tensor(s) have a dtype safetensors cannot store: "
                              + ", ".join(bad))


def _plan_dcp_to_hf(source: Source, prefix: str, allow_missing: bool) -> ConversionPlan:
    reader = source.reader
    where = str(reader.path)
    inventory = reader.inventory()
    selected = {rest: info for name, info in inventory.items() if (rest := _under(name, prefix)) is not None}
    tensors = {name: info for name, info in selected.items() if info.is_tensor}
    if not tensors:
        available = ", ".join(f"{p} ({n})" for p, n in reader.prefixes().items()) or "none"
        raise CheckpointError(f"{where}: no tensors under '{prefix}.'; available prefixes: {available} "
                              "(--prefix '' takes every tensor with its name unchanged)")
    warnings = [f"skipped non-tensor item {_join(prefix, name)}"
                for name, info in selected.items() if not info.is_tensor]
    stored = {name: _join(prefix, name) for name in tensors}
    untracked, omitted = _untracked_from_model(inventory, prefix, set(tensors), allow_missing, where)
    warnings += omitted
    tensors |= untracked
    stored |= {name: _join("model", name) for name in untracked}
    if source.family is None:
        names = {name: name for name in tensors}
        config = None
    else:
        names = keymaps.rename_all(list(tensors), source.family, to_hf=True, where=where)
        subword = tensors.get("local_encoder.expanded_embeddings.weight")
        try:
            config = olmo_core_to_hf(source.config, str(source.config_path), subword.shape[0] if subword else None)
        except ConfigError as exc:
            if reader.path == source.path:
                raise
            raise ConfigError(f"{exc} (to convert the weights without this config, point at {reader.path})") from None
    padding = _vocab_padding(source, config)
    planned = []
    for name, info in tensors.items():
        out, shape, transform = names[name], info.shape, None
        if padding and out in keymaps.BOLMO_VOCAB_ROWS_HF:
            _check_rows(info, padding.native_rows, where)
            shape, transform = padding.hf_shape(info.shape), padding.to_hf
        planned.append(PlannedTensor(out, stored[name], shape, info.dtype, transform))
    plan = ConversionPlan(source, "hf", planned, config, _find_tokenizer(source, config), warnings, prefix,
                          sorted(names[name] for name in untracked))
    if config is not None:
        _check_against_model({t.name: (t.shape, t.dtype) for t in planned}, config, where,
                             stored_as={t.name: t.source for t in planned})
    return plan


def _under(name: str, prefix: str) -> str | None:
    """`name` without `prefix.`, or None when it is not under `prefix`; prefix '' keeps every name as it is
    (a DCP saved without a top-level key, e.g. `dcp.save(model.state_dict())` or a separate EMA directory)."""
    if not prefix:
        return name
    return name[len(prefix) + 1:] if name.startswith(prefix + ".") else None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _untracked_from_model(inventory: dict[str, TensorInfo], prefix: str, found: set[str], allow_missing: bool,
                          where: str) -> tuple[dict[str, TensorInfo], list[str]]:
    """What an EMA copy (or any non-model prefix) lacks of `model`: (taken from `model`, warnings).

    EMA implementations average the trained parameters only and use the model's own value for
    everything training does not update (buffers, frozen parameters); the conversion does the same.
    The optimizer state says what is trained: an entry without `optim.state.<name>.*` comes from
    `model`. A trained parameter the prefix lacks is really missing, and so is everything when the
    checkpoint has no optimizer state to tell them apart: an error listing them, unless
    `allow_missing`, when a warning names what was left out."""
    if prefix in ("model", ""):
        return {}, []
    model = {rest: info for name, info in inventory.items()
             if info.is_tensor and (rest := _under(name, "model")) is not None}
    missing = sorted(set(model) - found)
    trained = {rest.rsplit(".", 1)[0] for name in inventory if (rest := _under(name, "optim.state")) is not None}
    untracked = {name: model[name] for name in missing if trained and name not in trained}
    really = [name for name in missing if name not in untracked]
    if not really:
        return untracked, []
    what = "trained parameter(s)" if trained else "tensor(s)"
    listing = f"{len(really)} {what} that 'model' has and '{prefix}' lacks{'' if trained else ' (buffers?)'}: " \
              + ", ".join(really)
    if not allow_missing:
        why = "" if trained else " (no optimizer state in the checkpoint tells buffers from parameters)"
        raise CheckpointError(f"{where}: {listing}; pass --allow-missing to write the output without them{why}")
    return untracked, [f"omitted {listing}"]


def _plan_hf_to_hf(source: Source) -> ConversionPlan:
    planned = [PlannedTensor(name, name, info.shape, info.dtype) for name, info in source.reader.inventory().items()]
    config = dict(source.config) if source.config else None
    plan = ConversionPlan(source, "hf", planned, config, _find_tokenizer(source, config))
    if source.family is not None:  # a Bolmo / Olmo2 / Olmo3 config; other configs are copied unchecked
        _check_against_model({t.name: (t.shape, t.dtype) for t in planned}, config, str(source.path))
    return plan


def _plan_hf_to_olmo_core(source: Source) -> ConversionPlan:
    where = str(source.path)
    inventory = source.reader.inventory()
    # The model check parses the HF config with the model's own config class first, so a malformed
    # field is reported by that class, before the OLMo-core config is derived from it.
    _check_against_model({name: (info.shape, info.dtype) for name, info in inventory.items()}, source.config, where)
    plan = ConversionPlan(source, "olmo-core", [], hf_to_olmo_core(source.config, str(source.config_path)))
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


def _check_against_model(found: dict[str, tuple[tuple[int, ...], torch.dtype]], hf_config: dict[str, Any],
                         where: str, stored_as: dict[str, str] | None = None) -> None:
    """Fail, listing every difference, unless the tensors are exactly what the config's model needs:
    same names and shapes, and floating-point exactly where the model's tensor is (a float-to-float
    difference such as bfloat16 vs float32 is a cast; an integer weight is not a weight).

    `found`: HF name -> (shape, dtype); `stored_as`: HF name -> the name in the source, for messages."""
    expected = expected_hf_tensors(hf_config, where)
    problems = differences({k: (shape,) for k, (shape, _) in found.items()},
                           {k: (tuple(t.shape),) for k, t in expected.items()},
                           "checkpoint", "model built from config", stored_as)
    for name in sorted(set(found) & set(expected)):
        dtype, wanted = found[name][1], expected[name].dtype
        if dtype.is_floating_point != wanted.is_floating_point:
            problems.append(f"{name}: checkpoint has dtype {dtype_name(dtype)}, model built from config has "
                            f"{dtype_name(wanted)} (floating point and integer do not mix)"
                            + stored_suffix(name, stored_as))
    if problems:
        raise CheckpointError(f"{where}: tensors do not match the model its config describes:" + listed(problems))


def _set_config_dtype(plan: ConversionPlan, dtype: torch.dtype) -> None:
    if plan.config is None:
        return
    if plan.target == "hf":
        plan.config["dtype"] = dtype_name(dtype)
        plan.config.pop("torch_dtype", None)
    else:  # OLMo-core repeats the dtype in every sub-config (blocks, norms, heads, hf_overrides): all of them
        _rewrite_dtypes(plan.config, dtype_name(dtype))


def _rewrite_dtypes(node: Any, name: str) -> None:
    """Set every `dtype` / `torch_dtype` field of a nested config to `name`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("dtype", "torch_dtype") and isinstance(value, str):
                node[key] = name
            else:
                _rewrite_dtypes(value, name)
    elif isinstance(node, list):
        for item in node:
            _rewrite_dtypes(item, name)


def _reference_tensors(reference: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """--verify-against REF: opened and checked while planning, so that a missing, damaged or wrong
    kind of reference fails before any data is written. It must be HF weights (what the output is)."""
    if not reference.exists():
        raise CheckpointError(f"{reference}: --verify-against: no such file or directory")
    ref = open_checkpoint(reference)
    if ref.is_dcp:
        raise CheckpointError(f"{reference}: --verify-against needs an HF directory or a .safetensors file, "
                              f"not a DCP checkpoint ({ref.kind.value})")
    ref.reader.check()
    return {name: (info.shape, info.dtype) for name, info in ref.reader.inventory().items()}


def _compare_with_reference(plan: ConversionPlan, reference: dict[str, tuple], label: Path) -> None:
    """The planned output must have the reference's tensor count, names, shapes and dtypes (what is written
    is then checked against the plan, so the output matches the reference too)."""
    problems = differences({t.name: (t.shape, t.dtype) for t in plan.tensors}, reference, "output", str(label))
    if problems:
        raise CheckpointError(f"{plan.source.path}: the output would differ from the reference {label} "
                              f"({len(problems)} difference(s)); nothing was written:" + listed(problems))


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
def write_hf_config(directory: Path, config: dict[str, Any]) -> None:
    """config.json plus the generation_config.json transformers' `generate` reads, with the
    config's own special ids (the released Bolmo repos carry stale ones there: eos 50279)."""
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {"_from_model_config": True} | {
        key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(key) is not None}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def execute(plan: ConversionPlan, dst: str | Path, overwrite: bool = False,
            shard_size: int | str = DEFAULT_SHARD_SIZE, progress: Progress | None = None) -> ConversionResult:
    """Write the planned checkpoint to `dst` (atomically) and check what was written. `shard_size`:
    bytes, or a size such as '2GB' (bolmo.checkpoint.safetensors_io.parse_size)."""
    start = time.perf_counter()
    dst = Path(dst)
    shard_size = parse_size(str(shard_size))
    with atomic_directory(dst, overwrite, sources=[plan.source.path]) as tmp:
        config = _relocate_tokenizer(plan, tmp)
        _copy_subword_tokenizer(plan, tmp)
        if plan.target == "hf":
            _write_hf(plan, tmp, shard_size, progress)
        else:
            _write_olmo_core(plan, tmp, progress)
        if config is not None and plan.target == "hf":
            write_hf_config(tmp, config)
        elif config is not None:
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        check_written(tmp, {t.name: (t.shape, t.dtype) for t in plan.tensors})
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


def _copy_subword_tokenizer(plan: ConversionPlan, out: Path) -> None:
    """A subword OLMo model's tokenizer files (beside its weights) go beside the converted weights,
    so the output loads with its tokenizer like the source did (chat template included)."""
    if plan.source.family == "bolmo":
        return
    for name in (*SUBWORD_TOKENIZER_FILES, "chat_template.jinja"):
        if (plan.source.root / name).is_file():
            shutil.copyfile(plan.source.root / name, out / name)


def _write_hf(plan: ConversionPlan, out: Path, shard_size: int, progress: Progress | None) -> None:
    by_name = {t.name: t for t in plan.tensors}
    write_weights(out, [(t.name, t.dtype, t.shape) for t in plan.tensors],
                  lambda name: plan.checked_rows(by_name[name]), shard_size, progress)


def _write_olmo_core(plan: ConversionPlan, out: Path, progress: Progress | None) -> None:
    with DCPWriter(out / DCP_SUBDIR) as writer:
        for planned in plan.tensors:
            writer.add(planned.name, plan.checked(planned, plan.produce(planned)))
            if progress:
                progress(planned.name, planned.nbytes)


def check_written(out: Path, planned: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
    """Re-open a written checkpoint from its headers/metadata: every planned tensor (name -> shape,
    dtype), nothing else, as planned."""
    reader = open_checkpoint(out).reader
    reader.check()
    found = {n: (i.shape, i.dtype) for n, i in reader.inventory().items()}
    problems = differences(found, planned, "output", "plan")
    if problems:
        raise CheckpointError(f"{out}: written checkpoint differs from the plan:" + listed(problems))


def convert(src: str | Path, dst: str | Path, to: str, *, prefix: str | None = None,
            dtype: torch.dtype | str | None = None, key_map: dict[str, str] | None = None,
            shard_size: int | str = DEFAULT_SHARD_SIZE,
            overwrite: bool = False, allow_missing: bool = False, verify_against: str | Path | None = None,
            progress: Progress | None = None) -> ConversionResult:
    """Plan and execute in one call (see `bolmo convert --help`)."""
    src = bundled_or_path(src)
    check_destination(dst, overwrite, sources=[src])
    plan = plan_conversion(src, to, prefix=prefix, dtype=dtype, key_map=key_map, allow_missing=allow_missing,
                           verify_against=verify_against)
    return execute(plan, dst, overwrite=overwrite, shard_size=shard_size, progress=progress)

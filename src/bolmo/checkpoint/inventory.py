"""What a checkpoint holds, independent of its format: one `TensorInfo` per stored name.

Every reader (DCP, safetensors) describes its contents with these records, so inspection,
verification and conversion planning work from metadata alone, before any tensor data is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from bolmo.errors import CheckpointError

# dtype names as written in config.json / on the command line, and safetensors' dtype codes.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
}
# Every code safetensors 0.8 loads into torch (its `safetensors.torch._TYPES`). Other dtypes
# (complex128, float8_e8m0fnu, ...) are refused when a conversion to safetensors is planned.
SAFETENSORS_CODES: dict[torch.dtype, str] = {
    torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint64: "U64", torch.uint32: "U32", torch.uint16: "U16", torch.uint8: "U8",
    torch.bool: "BOOL", torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fnuz: "F8_E4M3FNUZ", torch.float8_e5m2fnuz: "F8_E5M2FNUZ",
}
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {code: dtype for dtype, code in SAFETENSORS_CODES.items()}


def dtype_name(dtype: torch.dtype | None) -> str:
    """'float32' for torch.float32; 'object' for a pickled non-tensor item."""
    return "object" if dtype is None else str(dtype).removeprefix("torch.")


def check_finite(tensor: torch.Tensor, name: str, where: str, suffix: str = "") -> None:
    """CheckpointError naming the tensor unless every value is finite: a NaN or inf weight makes
    every score and generation silently meaningless. One tensor (or row block) at a time; 1-byte
    floats are widened first, as torch has no isfinite for some float8 kinds."""
    if not tensor.is_floating_point():
        return
    values = tensor.float() if tensor.dtype.itemsize == 1 else tensor
    if not bool(torch.isfinite(values).all()):
        raise CheckpointError(f"{where}: tensor {name!r}{suffix} holds NaN or infinite values")


def parse_dtype(name: str, where: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise CheckpointError(f"{where}: unsupported dtype {name!r} (known: {', '.join(DTYPES)})") from None


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a DCP tensor: its place in the full tensor and its byte range on disk."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    offset: int
    length: int
    transforms: tuple[str, ...] = ()  # DCP stream extensions applied on save, e.g. ("stream.zstd/1",)


@dataclass(frozen=True)
class TensorInfo:
    """A stored tensor (or, with dtype None, a pickled object such as a DCP `step` item)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype | None
    files: tuple[str, ...]
    chunks: tuple[Chunk, ...] = field(default=(), compare=False)

    @property
    def is_tensor(self) -> bool:
        return self.dtype is not None

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.is_tensor else 0

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize if self.is_tensor else 0


@dataclass
class Totals:
    count: int = 0
    parameters: int = 0
    bytes: int = 0

    def add(self, info: TensorInfo) -> None:
        self.count += 1
        self.parameters += info.numel
        self.bytes += info.nbytes


def module_of(name: str, depth: int) -> str:
    """The first `depth` dotted components: `model.blocks.0.w` -> `model` (1) or `model.blocks` (2)."""
    return ".".join(name.split(".")[:depth])


def totals_by(infos: Iterable[TensorInfo], depth: int) -> dict[str, Totals]:
    """Tensor totals grouped by name prefix (depth 1: model / ema / optim; depth 2: per module)."""
    out: dict[str, Totals] = {}
    for info in infos:
        if info.is_tensor:
            out.setdefault(module_of(info.name, depth), Totals()).add(info)
    return dict(sorted(out.items()))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def differences(found: dict[str, tuple], expected: dict[str, tuple], found_label: str,
                expected_label: str, stored_as: dict[str, str] | None = None) -> list[str]:
    """Every name missing, extra or described differently (values: (shape,) or (shape, dtype)).

    `stored_as`: found name -> the name the source stores it under (e.g. an OLMo-core key for an HF
    name), added to the messages so the user can find the tensor in the source."""
    out = [f"missing {name} (in {expected_label}, not in {found_label})" for name in sorted(set(expected) - set(found))]
    out += [f"extra {name} (in {found_label}, not in {expected_label}){stored_suffix(name, stored_as)}"
            for name in sorted(set(found) - set(expected))]
    for name in sorted(set(found) & set(expected)):
        if found[name] != expected[name]:
            out.append(f"{name}: {found_label} has {_describe(found[name])}, {expected_label} has "
                       f"{_describe(expected[name])}{stored_suffix(name, stored_as)}")
    return out


def listed(problems: list[str], limit: int = 20) -> str:
    """Problems as indented lines for an error message, at most `limit` of them and then how many
    more (a model of the wrong size differs in every tensor: hundreds of lines help nobody)."""
    shown = problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])
    return "".join(f"\n  {p}" for p in shown)


def stored_suffix(name: str, stored_as: dict[str, str] | None) -> str:
    """' (stored as X)' when the source stores `name` under another name X, else ''."""
    stored = (stored_as or {}).get(name, name)
    return "" if stored == name else f" (stored as {stored})"


def _describe(value: tuple) -> str:
    return " ".join(dtype_name(v) if isinstance(v, torch.dtype) else str(list(v)) for v in value)

"""`bolmo verify`: is this directory a complete, self-consistent checkpoint of the model its config
describes? Collects every problem instead of stopping at the first, so one run lists them all."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bolmo.checkpoint.convert import ConversionPlan, plan_conversion
from bolmo.checkpoint.dcp_reader import DCPCheckpoint
from bolmo.checkpoint.inventory import TensorInfo, dtype_name
from bolmo.checkpoint.sources import open_checkpoint
from bolmo.errors import BolmoError


@dataclass
class VerifyReport:
    path: Path
    kind: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tensors: int = 0
    objects: int = 0
    total_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_directory(path: str | Path) -> VerifyReport:
    """Files named by the metadata/index exist and are long enough, headers and byte ranges are
    valid, chunks tile their tensors, the config's model has exactly the stored tensors, and every
    one of its weights is finite."""
    report = VerifyReport(Path(path))
    try:
        source = open_checkpoint(path)
    except BolmoError as exc:
        report.problems.append(str(exc))
        return report
    report.kind = source.kind.value
    report.notes += source.notes
    reader = source.reader
    report.problems += reader.problems(check_items=True) if isinstance(reader, DCPCheckpoint) else reader.problems()
    inventory = reader.inventory()
    report.tensors = sum(info.is_tensor for info in inventory.values())
    report.objects = len(inventory) - report.tensors
    report.total_bytes = sum(info.nbytes for info in inventory.values())
    if report.problems:
        return report
    if source.family is None:
        report.notes.append("no model config: checked the file structure only")
        return report
    try:
        plan = plan_conversion(path, "hf")
    except BolmoError as exc:
        report.problems.append(str(exc))
        return report
    report.notes += plan.warnings
    report.notes += _dtype_notes(inventory, plan.config.get("dtype") if plan.config else None)
    report.problems += _non_finite_problems(plan)
    return report


def _non_finite_problems(plan: ConversionPlan) -> list[str]:
    """Every model weight holding NaN or inf, found by reading the weights as `bolmo convert` does:
    one tensor (one row chunk of a sharded DCP tensor) at a time, so memory stays bounded."""
    problems = []
    for planned in plan.tensors:
        try:
            for _ in plan.checked_rows(planned):
                pass
        except BolmoError as exc:
            problems.append(str(exc))
    return problems


def _dtype_notes(inventory: dict[str, TensorInfo], config_dtype: str | None) -> list[str]:
    stored = sorted({dtype_name(i.dtype) for i in inventory.values() if i.is_tensor and i.dtype.is_floating_point})
    if config_dtype and stored and stored != [config_dtype]:
        return [f"config dtype is {config_dtype}, stored floating tensors are {', '.join(stored)}"]
    return []

"""`bolmo train` configuration: dataclasses, read from YAML, with `key=value` overrides.

One YAML file describes a run; every field has a default except the paths. Command-line
overrides use dotted keys (`optim.lr=3e-4`, `losses.weights.boundary=2`); values are parsed as
YAML and checked against the field's type, and unknown keys anywhere are refused by name, so a
typo never silently trains with a default.

Fields left unset take the released recipe's value for the run's stage (docs/training-reference.md §5,
§8: `STAGE_DEFAULTS` for the optimizer, schedule, batch and data seed, `STAGE_LOSSES` for
the loss weights), so `stage: stage2` alone never trains at stage 1's learning rate. The 1B values
are used; the 7B recipe differs only in the peak LRs (stage 1 5e-4, stage 2 3.66e-5).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bolmo.errors import ConfigError

STAGES = ("subword", "stage1", "stage2")
# Losses each stage can use, and the released weights (docs/training-reference.md §8.1).
STAGE_LOSSES: dict[str, dict[str, float]] = {
    "subword": {"ce": 1.0},
    "stage1": {"local_encoder": 1.0, "ce": 1.0, "local_decoder": 1.0, "boundary": 4.0},
    "stage2": {"ce": 1.0, "boundary": 4.0, "ratio": 0.0},
}
# Released (1B) values of the fields a stage changes; `subword` (our teacher pretraining) takes
# stage 1's. Keys are dotted config paths.
_STAGE1_DEFAULTS: dict[str, Any] = {
    "optim.lr": 7e-4, "optim.betas": [0.9, 0.999], "schedule.steps": 75_000,
    "global_batch_bytes": 786_432, "data.seed": 0,
}
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "subword": _STAGE1_DEFAULTS,
    "stage1": _STAGE1_DEFAULTS,
    "stage2": {"optim.lr": 5.2e-5, "optim.betas": [0.9, 0.95], "schedule.steps": 150_000,
               "global_batch_bytes": 1_572_864, "data.seed": 1234},
}


@dataclass
class ModelConfig:
    """Where the weights come from. `path` is an HF or OLMo-core directory: for stage 1 the
    `bolmo byteify-init` output, for stage 2 a stage-1 export or checkpoint (`<run>/step<N>`),
    for `subword` an OLMo 2/3 directory (with `random_init`, only its config.json is used)."""

    path: str = ""
    teacher: str | None = None  # stage 1: the subword OLMo model that was byteified
    random_init: bool = False  # subword stage: fresh N(0, initializer_range) weights


@dataclass
class DataConfig:
    """A `bolmo prepare` directory and how instances are cut (see bolmo.train.data)."""

    dir: str = ""
    tokens_per_instance: int = 4096  # S
    seq_len: int | None = None  # L, byte slots per instance; None = 6 * S
    seed: int | None = None  # shuffle seed; None: the stage's (0 in stage 1, 1234 in stage 2)
    shuffle: bool = True


@dataclass
class OptimConfig:
    """AdamW. Weight decay 0 on the embedding tables; the reference decays norms and biases."""

    lr: float | None = None  # peak; None: the stage's (7e-4 stage 1, 5.2e-5 stage 2)
    global_lr_ratio: float = 0.5  # stage 2: LR of the global blocks relative to `lr`
    betas: list[float] | None = None  # None: the stage's ([0.9, 0.999] stage 1, [0.9, 0.95] stage 2)
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norms_and_biases: bool = True  # false: also no decay on 1-d tensors (norms, biases)
    max_grad_norm: float = 0.5  # <= 0: no clipping (the norm is still logged)


@dataclass
class ScheduleConfig:
    """Linear warm-up from 0, then `decay` to `final_lr_ratio` x peak at `steps`."""

    steps: int | None = None  # None: the stage's (75,000 stage 1, 150,000 stage 2)
    warmup_fraction: float = 0.1  # warm-up steps = round(fraction * steps)
    decay: str = "linear"  # linear | cosine | constant
    final_lr_ratio: float = 0.0


@dataclass
class LossConfig:
    """Loss weights and the distillation settings of docs/training-reference.md §3."""

    weights: dict[str, float] | None = None  # None: the stage's released weights
    schedules: dict[str, str] = field(default_factory=dict)  # loss -> "constant" | "linear_decrease:N"
    encoder_lookahead: int | None = None  # K global blocks for the encoder loss; None: min(4, layers - 1)
    encoder_lookahead_weights: list[float] | None = None  # per block; None: 4 on the K-th only
    encoder_embedding_weight: float = 0.0  # the direct comparison with the teacher's embeddings
    rep_compare_fn: str = "l2"  # l2 | l2_rmsnorm | cos_dist
    div_fn: str = "kl"  # kl | reverse_kl | tvd | tvd_temp_limit
    binarization_temp: float = 5.0
    temperature: float = 1.0  # softmax temperature of the student (and the teacher) log-probs
    alm_debiasing: bool = True


@dataclass
class CompressionConfig:
    """Stage 2: steer bytes per patch from `start_ratio` to `target_ratio` over `steps` by
    merging target patches (`kind` bpe or space). The ratio loss, when weighted, aims at
    `target_ratio` (docs/training-reference.md §3.7)."""

    kind: str | None = None  # None | bpe | space
    start_ratio: float = 4.3
    target_ratio: float = 4.3
    steps: int = 150_000


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps between checkpoints (the last step is always saved)
    keep: int = 1  # step directories kept (oldest removed first)


@dataclass
class LoggingConfig:
    every: int = 10  # steps between metrics.jsonl lines / console lines
    progress: bool = True  # progress bar on rank 0
    plot: bool = True  # loss_curve.png at the end (needs matplotlib)
    tensorboard: bool = False  # needs the tensorboard package
    wandb_project: str | None = None  # needs the wandb package


@dataclass
class TrainConfig:
    stage: str = "stage1"
    run_dir: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    global_batch_bytes: int | None = None  # byte slots per optimizer step, all ranks; None: the stage's
    micro_batch_instances: int = 2  # instances per forward/backward on one rank
    seed: int = 12536  # model init (random_init) and everything random in the loop
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    precision: str = "auto"  # auto (bfloat16 autocast on CUDA, float32 on CPU) | float32 | bfloat16
    peak_flops: float | None = None  # per device, for MFU; None: known GPUs, or measured on CPU
    threads: int | None = None  # torch CPU threads per process (None: torch's default)
    resume: bool = False  # continue from <run_dir>/latest when it exists
    export: bool = True  # write <run_dir>/hf (HF format) at the end

    def __post_init__(self) -> None:
        """Unset stage-dependent fields take the stage's released values (an unknown stage is
        left for `validate` to name)."""
        for key, value in STAGE_DEFAULTS.get(self.stage, {}).items():
            *parents, leaf = key.split(".")
            owner = self
            for part in parents:
                owner = getattr(owner, part)
            if getattr(owner, leaf) is None:
                setattr(owner, leaf, list(value) if isinstance(value, list) else value)

    @property
    def seq_len(self) -> int:
        return self.data.seq_len or 6 * self.data.tokens_per_instance

    @property
    def global_instances(self) -> int:
        return self.global_batch_bytes // self.seq_len

    def loss_weights(self) -> dict[str, float]:
        """The stage's released weights, updated by `losses.weights`."""
        return {**STAGE_LOSSES[self.stage], **(self.losses.weights or {})}

    def validate(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{key}: {msg}")

        need(self.stage in STAGES, "stage", f"must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for key, value in _leaves(self.to_dict()):  # a NaN learning rate would train to NaN without a word
            need(not isinstance(value, float) or math.isfinite(value), key, f"must be a finite number, got {value}")
        need(self.optim.lr > 0, "optim.lr", f"must be positive, got {self.optim.lr}")
        need(self.optim.eps > 0 and self.optim.weight_decay >= 0, "optim", "eps must be positive, weight_decay >= 0")
        need(bool(self.run_dir), "run_dir", "is required")
        need(bool(self.model.path), "model.path", "is required")
        need(bool(self.data.dir), "data.dir", "is required")
        need((self.model.teacher is not None) == (self.stage == "stage1"), "model.teacher",
             "is required in stage1 and only used there")
        need(not self.model.random_init or self.stage == "subword", "model.random_init", "only for stage subword")
        unknown = sorted(set(self.losses.weights or {}) - set(STAGE_LOSSES[self.stage]))
        need(not unknown, "losses.weights", f"{unknown} not used in {self.stage} (it uses {sorted(STAGE_LOSSES[self.stage])})")
        need(any(w != 0 for w in self.loss_weights().values()), "losses.weights", "all weights are 0")
        need(set(self.losses.schedules) <= set(STAGE_LOSSES[self.stage]), "losses.schedules",
             f"names losses not used in {self.stage}")
        need(self.losses.rep_compare_fn in ("l2", "l2_rmsnorm", "cos_dist"), "losses.rep_compare_fn",
             f"must be l2, l2_rmsnorm or cos_dist, got {self.losses.rep_compare_fn!r}")
        need(self.losses.div_fn in ("kl", "reverse_kl", "tvd", "tvd_temp_limit"), "losses.div_fn",
             f"must be kl, reverse_kl, tvd or tvd_temp_limit, got {self.losses.div_fn!r}")
        need(self.compression.kind in (None, "bpe", "space"), "compression.kind",
             f"must be null, bpe or space, got {self.compression.kind!r}")
        need(self.compression.kind is None or self.stage == "stage2", "compression.kind",
             "only stage2 can compress (the teacher's positions must align with the patches in stage1)")
        need(self.compression.target_ratio > 1 and self.compression.start_ratio > 0, "compression.target_ratio",
             "must be > 1 (bytes per patch)")
        need(self.compression.steps > 0, "compression.steps", "must be positive")
        need(self.schedule.steps > 0, "schedule.steps", "must be positive")
        need(0 <= self.schedule.warmup_fraction < 1, "schedule.warmup_fraction", "must be in [0, 1)")
        need(self.schedule.decay in ("linear", "cosine", "constant"), "schedule.decay",
             f"must be linear, cosine or constant, got {self.schedule.decay!r}")
        need(len(self.optim.betas) == 2, "optim.betas", "needs two values")
        need(self.precision in ("auto", "float32", "bfloat16"), "precision",
             f"must be auto, float32 or bfloat16, got {self.precision!r}")
        need(self.micro_batch_instances > 0, "micro_batch_instances", "must be positive")
        need(self.global_batch_bytes % self.seq_len == 0 and self.global_instances > 0, "global_batch_bytes",
             f"{self.global_batch_bytes} is not a positive multiple of the instance size data.seq_len = {self.seq_len}")
        need(self.checkpoint.every > 0 and self.checkpoint.keep > 0, "checkpoint", "every and keep must be positive")
        need(self.logging.every > 0, "logging.every", "must be positive")

    def batch_layout(self, world_size: int) -> tuple[int, int]:
        """(instances per rank per step, micro-batches per step) for `world_size` ranks."""
        per_rank, rest = divmod(self.global_instances, world_size)
        if rest or per_rank % self.micro_batch_instances:
            raise ConfigError(
                f"global_batch_bytes: {self.global_instances} instances per step cannot be split into "
                f"{world_size} rank(s) x micro-batches of micro_batch_instances={self.micro_batch_instances}")
        return per_rank, per_rank // self.micro_batch_instances

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def changes_from(self, path: str | Path) -> list[str]:
        """`key: old -> new` for every setting that differs from the config saved at `path` (a run
        directory's config.yaml), `resume` aside; nothing when it is missing or unreadable."""
        try:
            saved = dict(_leaves(yaml.safe_load(Path(path).read_text())))
        except (OSError, yaml.YAMLError):
            return []
        return [f"{key}: {saved.get(key)!r} -> {value!r}" for key, value in _leaves(self.to_dict())
                if key != "resume" and saved.get(key) != value]


def _leaves(tree: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every scalar in a nested dict / list."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            yield from _leaves(value, f"{key}.{name}" if key else str(name))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{key}[{i}]")
    else:
        yield key, tree


# ----------------------------------------------------------------------------- loading

def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """A validated TrainConfig from a YAML file (None: defaults only) plus `key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides:
        apply_override(data, item)
    config = from_dict(TrainConfig, data, "")
    config.validate()
    return config


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in the nested dict (value parsed as YAML; the type is checked later)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=3e-4)")
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parents[:i + 1])} is not a section")
        node = child
    try:
        node[leaf] = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from `data`, checking every value against the field's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]} (known: {', '.join(names)})")
    values = {name: _coerce(data[name], hints[name], f"{where}.{name}" if where else name)
              for name in names if name in data}
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` as type `hint` (dataclass, X | None, list[X], dict[str, X], int, float, bool, str)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config field {key} has an unsupported type {hint}")
    raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")

"""`bolmo train`: the training loop shared by the three stages.

    subword  plain next-token pretraining of a subword OLMo model (a toy teacher)
    stage1   global blocks frozen, teacher-forced boundaries, distillation from the teacher
    stage2   end to end, predicted boundaries, optional compression schedule and ratio loss

One optimizer step: the rank's share of the global batch is cut into micro-batches; the loss
terms of each are normalised with counts over the whole global batch (bolmo.train.stages), so
the step's objective is the same however the batch is split; gradients accumulate, are clipped
(global L2 norm over trainable parameters), the LR is set from the schedule, AdamW steps.
Everything random in the loop is seeded by (seed, step), so a resumed run repeats an
uninterrupted one exactly.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bolmo.errors import BolmoWarning, ConfigError
from bolmo.loading import load
from bolmo.model.bolmo import BolmoForCausalLM
from bolmo.model.olmo import OlmoForCausalLM
from bolmo.olmo.config import OlmoConfig
from bolmo.tokenizer import resolve_subword_tokenizer
from bolmo.train.checkpointing import Checkpointer, ModelDescription, export_hf
from bolmo.train.compression import compress_batch, compression_ratio
from bolmo.train.config import TrainConfig
from bolmo.train.data import ByteDataConfig, ByteDataset
from bolmo.train.distributed import (
    Dist,
    autocast,
    autocast_dtype,
    full_norm,
    init_distributed,
    set_gradient_sync,
    shard,
    shutdown,
)
from bolmo.train.losses import BatchCounts, loss_schedule_multiplier, total_loss
from bolmo.train.metrics import METRICS_FILE, PLOT_FILE, FlopsPerStep, MetricsLogger, peak_flops, plot_losses
from bolmo.train.optim import build_optimizer, lr_multiplier, set_lr
from bolmo.train.stages import Normaliser, TeacherParts, TrainModule
from bolmo.train.vocab import SubwordVocab

HF_EXPORT_DIR = "hf"


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # last step trained
    metrics: dict[str, float]  # of the last step
    export: Path | None
    seconds: float
    main: bool  # rank 0 (the process that reports)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) the training job `config` describes; every process of a torchrun job calls it."""
    dist = init_distributed(config.threads)
    try:
        return Trainer(config, dist).run()
    finally:
        shutdown(dist)


# ----------------------------------------------------------------------------- building

def _sha256(tokenizer_dir: Path) -> str:
    return hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()


def _check_tokenizer(tokenizer_dir: Path, data: ByteDataset, what: str) -> None:
    """The model's subword tokenizer must be the one the data was prepared with: expanded ids
    and teacher ids index its vocabulary."""
    if _sha256(tokenizer_dir) != data.meta["tokenizer"]["sha256"]:
        raise ConfigError(f"{what}: its subword tokenizer ({tokenizer_dir}) differs from the one data.dir "
                          f"{data.data_dir} was prepared with ({data.meta['tokenizer']['source']})")


@torch.no_grad()
def init_olmo_weights(model: OlmoForCausalLM, std: float) -> None:
    """transformers' OLMo init: N(0, std) for linear and embedding weights, norms at 1."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)


def build_model(config: TrainConfig, data: ByteDataset) -> tuple[nn.Module, Path]:
    """The model to train and the directory of its subword tokenizer."""
    path = Path(config.model.path)
    if config.stage == "subword":
        if config.model.random_init:
            torch.manual_seed(config.seed)
            olmo_config = OlmoConfig.from_file(path / "config.json")
            model = OlmoForCausalLM(olmo_config)
            init_olmo_weights(model, olmo_config.initializer_range)
        else:
            model = load(path)
        if not isinstance(model, OlmoForCausalLM):
            raise ConfigError(f"model.path: {path} is not a subword OLMo model (stage subword trains one)")
        tokenizer = path if (path / "tokenizer.json").is_file() else data.data_dir / "tokenizer"
    else:
        model = load(path)
        if not isinstance(model, BolmoForCausalLM):
            raise ConfigError(f"model.path: {path} is not a Bolmo model ({config.stage} trains one)")
        tokenizer = resolve_subword_tokenizer(model.config.tokenizer_config.original_identifier, path)
    _check_tokenizer(tokenizer, data, "model.path")
    return model.train(), tokenizer


def build_teacher(config: TrainConfig, model: BolmoForCausalLM, data: ByteDataset) -> TeacherParts:
    """The stage-1 teacher's embeddings, final norm and head. Its blocks must equal the student's
    global blocks (byteify-init copies them), which stand in for them from then on."""
    teacher = load(config.model.teacher)
    if not isinstance(teacher, OlmoForCausalLM):
        raise ConfigError(f"model.teacher: {config.model.teacher} is not a subword OLMo model")
    ours, theirs = model.model.layers.state_dict(), teacher.model.layers.state_dict()
    if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k]) for k in ours):
        raise ConfigError(f"model.teacher: the global blocks of model.path ({config.model.path}) differ from the "
                          "teacher's; stage 1 starts from `bolmo byteify-init` of this teacher")
    if teacher.tokenizer is not None:
        _check_tokenizer(teacher.tokenizer.directory, data, "model.teacher")
    return TeacherParts(teacher)


# ----------------------------------------------------------------------------- the loop

class Trainer:
    def __init__(self, config: TrainConfig, dist: Dist) -> None:
        self.config, self.dist = config, dist
        self.run_dir = Path(config.run_dir)
        self.per_rank, _ = config.batch_layout(dist.world_size)
        data_config = ByteDataConfig(tokens_per_instance=config.data.tokens_per_instance, seq_len=config.data.seq_len,
                                     seed=config.data.seed, shuffle=config.data.shuffle,
                                     compression=config.compression.kind)
        self.data = ByteDataset(config.data.dir, data_config, dist.rank, dist.world_size)
        model, tokenizer = build_model(config, self.data)
        teacher, whitespace = None, None
        if config.stage == "stage1":
            teacher = build_teacher(config, model, self.data)
            whitespace = SubwordVocab.load(self.data.data_dir / "tokenizer").whitespace_initial_ids()
        pad = self.data.pad_s if self.data.pad_s != self.data.eos_s else None
        self.module = TrainModule(config.stage, model, config.losses, teacher, whitespace, pad).to(dist.device)
        # Positions trained on: byte slots for a Bolmo stage (what its prompt cuts and scoring
        # windows count), teacher tokens for the subword stage.
        trained = config.data.tokens_per_instance if config.stage == "subword" else config.data.seq_len
        self.desc = ModelDescription.of(model, tokenizer, trained)
        k = len(self.module.encoder_weights) - 1 if config.stage == "stage1" else 0
        self.flops = FlopsPerStep.of(config.stage, model, k, teacher.lm_head if teacher is not None else None)
        if dist.active:
            shard(self.module, self.module.fsdp_units())
        self.optimizer = build_optimizer(self.module.model, config.optim,
                                         config.optim.global_lr_ratio if config.stage == "stage2" else 1.0)
        self.checkpointer = Checkpointer(self.run_dir, dist, self.desc, config.to_dict(), config.checkpoint.keep)
        self.amp = autocast_dtype(config.precision, dist.device)

    def resume(self) -> int:
        """The step to continue after: that of <run_dir>/latest when resuming, else 0."""
        self.checkpointer.remove_partial()
        latest = self.checkpointer.latest()
        if latest is None:
            return 0
        if not self.config.resume:
            raise ConfigError(f"run_dir: {self.run_dir} already holds checkpoints (latest: {latest.name}); resume "
                              "them with --resume (resume=true) or choose a new run_dir")
        state = self.checkpointer.load(latest, self.module, self.optimizer)
        self.data.load_state_dict(state["data"])
        return int(state["step"])

    def run(self) -> TrainResult:
        config, dist = self.config, self.dist
        started = time.perf_counter()
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if config.resume and self.checkpointer.latest() is not None:  # allowed, but never unnoticed
                changes = config.changes_from(self.run_dir / "config.yaml")
                if changes:
                    warnings.warn(f"resuming {self.run_dir} with settings that differ from its config.yaml (the run "
                                  f"continues with the new ones): {'; '.join(changes)}", BolmoWarning, stacklevel=2)
            config.save(self.run_dir / "config.yaml")
        dist.barrier()
        start = self.resume()
        peak, _ = peak_flops(dist.device, config.peak_flops)
        logger = MetricsLogger(self.run_dir, config.logging, config.schedule.steps, start, dist.is_main,
                               config.to_dict())
        batches = self.data.batches(self.per_rank)
        metrics: dict[str, float] = {}
        for step in range(start + 1, config.schedule.steps + 1):
            metrics = self.step(step, next(batches), peak)
            logger.log(step, metrics)
            if step % config.checkpoint.every == 0 or step == config.schedule.steps:
                self.checkpointer.save(step, self.module, self.optimizer, self.data.state_dict())
        logger.close()
        export = export_hf(self.module, self.desc, self.run_dir / HF_EXPORT_DIR, dist) if config.export else None
        if dist.is_main and config.logging.plot:
            plot_losses(self.run_dir / METRICS_FILE, self.run_dir / PLOT_FILE)
        return TrainResult(self.run_dir, config.schedule.steps, metrics, export, time.perf_counter() - started,
                           dist.is_main)

    def micro_batches(self, batch: dict[str, torch.Tensor], step: int) -> list[dict[str, torch.Tensor]]:
        """The rank batch, compressed to the scheduled ratio (stage 2), cut into micro-batches."""
        comp = self.config.compression
        if comp.kind is not None:
            rng = np.random.default_rng([self.config.seed, step, self.dist.rank])
            batch = compress_batch(batch, comp.kind, self.ratio(step), rng)
        size = self.config.micro_batch_instances
        return [{k: v[i:i + size].to(self.dist.device) for k, v in batch.items()} for i in range(0, self.per_rank, size)]

    def ratio(self, step: int) -> float:
        comp = self.config.compression
        return compression_ratio(step, comp.start_ratio, comp.target_ratio, comp.steps)

    def forward_backward(self, step: int, mbs: list[dict[str, torch.Tensor]]
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[float]]:
        """Forward and backward over the step's micro-batches; gradients accumulate. Returns the
        summed loss terms, the micro-batch-averaged metrics (this rank) and the global sizes
        [labelled positions, true patches, bytes, non-empty patch slots]."""
        config, dist, module = self.config, self.dist, self.module
        counts = [module.counts(mb) for mb in mbs]
        sizes = torch.tensor([sum(c.n_bytes for c in counts), sum(c.n_patches for c in counts),
                              sum(int(mb["patch_lens"].sum()) for mb in mbs),
                              sum(int((mb["patch_lens"] != 0).sum()) for mb in mbs)], dtype=torch.float64)
        sizes = dist.all_reduce(sizes).tolist()
        norm = Normaliser(BatchCounts(int(sizes[0]), int(sizes[1])), config.global_instances, config.seq_len,
                          config.data.tokens_per_instance)
        weights = config.loss_weights()
        multipliers = {name: loss_schedule_multiplier(spec, step) for name, spec in config.losses.schedules.items()}
        sums: dict[str, torch.Tensor] = {}
        means: dict[str, torch.Tensor] = {}
        for i, mb in enumerate(mbs):
            set_gradient_sync(module, i == len(mbs) - 1)
            with autocast(dist.device, self.amp):
                terms, stats = module(mb, norm, config.compression.target_ratio)
            loss = total_loss(terms, weights, multipliers)
            (loss * dist.grad_scale).backward()
            for name, value in {"loss": loss, **{f"loss/{k}": v for k, v in terms.items()}}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            for name, value in stats.items():
                means[name] = means.get(name, 0.0) + value.float() / len(mbs)
        return sums, means, sizes

    def step(self, step: int, batch: dict[str, torch.Tensor], peak: float | None) -> dict[str, float]:
        """One optimizer step on the rank batch; returns the step's metrics (global)."""
        config = self.config
        t0 = time.perf_counter()
        sums, means, (_, _, n_bytes, n_true_patches) = self.forward_backward(step, self.micro_batches(batch, step))
        params = [p for p in self.module.model.parameters() if p.requires_grad]
        max_norm = config.optim.max_grad_norm if config.optim.max_grad_norm > 0 else float("inf")
        grad_norm = full_norm(torch.nn.utils.clip_grad_norm_(params, max_norm))
        multiplier = lr_multiplier(step, config.schedule)
        set_lr(self.optimizer, config.optim.lr, multiplier)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        out = self._reduce(sums, means)
        seconds = time.perf_counter() - t0
        patches = n_bytes * out["boundary_mean"] if config.stage == "stage2" else n_true_patches
        out.update(lr=config.optim.lr * multiplier, grad_norm=float(grad_norm), step_time=seconds,
                   bytes_per_s=n_bytes / seconds)
        if peak:
            out["mfu"] = self.flops(n_bytes, patches) / (seconds * peak * self.dist.world_size)
        if config.compression.kind is not None:
            out["compression_ratio"] = self.ratio(step)
        return out

    def _reduce(self, sums: dict[str, Any], means: dict[str, Any]) -> dict[str, float]:
        """Loss terms summed over ranks (each is a share of the global value), metrics averaged."""
        names = sorted(sums) + sorted(means)
        values = torch.stack([torch.as_tensor(sums[n] if n in sums else means[n], dtype=torch.float64).cpu()
                              for n in names])
        values[len(sums):] /= self.dist.world_size
        return dict(zip(names, self.dist.all_reduce(values).tolist()))

"""`bolmo train` configuration (YAML, dotted overrides, type checks), the LR schedule and the AdamW
parameter groups."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from bolmo.config import BolmoConfig
from bolmo.errors import ConfigError
from bolmo.model.bolmo import BolmoForCausalLM
from bolmo.train.config import STAGE_LOSSES, LossConfig, OptimConfig, ScheduleConfig, load_config
from bolmo.train.optim import lr_multiplier, param_groups
from bolmo.train.stages import encoder_loss_weights

BASE = {"stage": "stage2", "run_dir": "runs/x", "model": {"path": "m"}, "data": {"dir": "d", "tokens_per_instance": 16,
                                                                                  "seq_len": 64},
        "global_batch_bytes": 256}


def config_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}))
    return path


def test_yaml_and_overrides_are_typed(tmp_path: Path) -> None:
    cfg = load_config(config_file(tmp_path), ["optim.lr=1e-3", "schedule.steps=10", "losses.weights.ratio=0.5",
                                              "compression.kind=bpe", "optim.betas=[0.9, 0.95]", "resume=true"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)  # YAML reads "1e-3" as a string
    assert cfg.schedule.steps == 10 and cfg.resume is True and cfg.optim.betas == [0.9, 0.95]
    assert cfg.compression.kind == "bpe"
    assert cfg.loss_weights() == {"ce": 1.0, "boundary": 4.0, "ratio": 0.5}
    assert cfg.seq_len == 64 and cfg.global_instances == 4
    assert load_config(config_file(tmp_path), ["compression.kind=null"]).compression.kind is None


def test_saved_config_loads_back_identically(tmp_path: Path) -> None:
    cfg = load_config(config_file(tmp_path), ["optim.lr=2e-4", "losses.schedules.ce=linear_decrease:100"])
    cfg.save(tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize("override, named", [
    ("optim.lrr=1", "optim.lrr"),
    ("bogus=1", "bogus"),
    ("schedule.steps=abc", "schedule.steps"),
    ("schedule.steps=1.5", "schedule.steps"),
    ("checkpoint.every=true", "checkpoint.every"),
    ("optim.betas=0.9", "optim.betas"),
    ("losses.weights.local_encoder=1", "losses.weights"),  # a stage-1 loss in stage 2
    ("losses.weights.boundary=x", "losses.weights.boundary"),
    ("compression.kind=zip", "compression.kind"),
    ("global_batch_bytes=100", "global_batch_bytes"),
    ("precision=fp8", "precision"),
    ("schedule.decay=step", "schedule.decay"),
    ("optim=3", "optim"),
    ("noequals", "key=value"),
])
def test_bad_values_name_the_field(tmp_path: Path, override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("[", r"\[")):
        load_config(config_file(tmp_path), [override])


def test_unknown_yaml_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.tokens_per_instanse"):
        load_config(config_file(tmp_path, data={"dir": "d", "tokens_per_instanse": 16}))


def test_stage_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.teacher"):
        load_config(config_file(tmp_path), ["stage=stage1"])
    with pytest.raises(ConfigError, match="compression.kind"):
        load_config(config_file(tmp_path), ["stage=stage1", "model.teacher=t", "compression.kind=bpe"])
    with pytest.raises(ConfigError, match="model.teacher"):
        load_config(config_file(tmp_path), ["model.teacher=t"])  # stage 2 has no teacher
    stage1 = load_config(config_file(tmp_path), ["stage=stage1", "model.teacher=t"])
    assert stage1.loss_weights() == STAGE_LOSSES["stage1"] == {"local_encoder": 1, "ce": 1, "local_decoder": 1,
                                                               "boundary": 4}


def test_batch_layout_over_ranks(tmp_path: Path) -> None:
    cfg = load_config(config_file(tmp_path), ["global_batch_bytes=512", "micro_batch_instances=2"])
    assert cfg.batch_layout(1) == (8, 4) and cfg.batch_layout(2) == (4, 2) and cfg.batch_layout(4) == (2, 1)
    with pytest.raises(ConfigError, match="global_batch_bytes"):
        cfg.batch_layout(3)


def test_lr_schedule() -> None:
    linear = ScheduleConfig(steps=100, warmup_fraction=0.1)
    assert [lr_multiplier(g, linear) for g in (1, 5, 10, 55, 100)] == pytest.approx([0.1, 0.5, 1.0, 0.5, 0.0])
    cosine = ScheduleConfig(steps=100, warmup_fraction=0.0, decay="cosine", final_lr_ratio=0.1)
    assert lr_multiplier(0, cosine) == pytest.approx(1.0) and lr_multiplier(100, cosine) == pytest.approx(0.1)
    assert lr_multiplier(50, cosine) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_multiplier(70, ScheduleConfig(steps=100, warmup_fraction=0.0, decay="constant")) == 1.0


def test_param_groups_decay_and_global_lr() -> None:
    model = BolmoForCausalLM(BolmoConfig.preset("tiny"))
    groups = param_groups(model, OptimConfig(weight_decay=0.1), global_lr_scale=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = [({names[id(p)] for p in g["params"]}, g["weight_decay"], g["lr_scale"]) for g in groups]
    no_decay = set().union(*(n for n, wd, _ in by_group if wd == 0))
    assert no_decay == {"model.local_encoder.byte_embedding.weight", "model.local_encoder.subword_embedding.weight"}
    half = set().union(*(n for n, _, scale in by_group if scale == 0.5))
    assert half == {n for n in names.values() if n.startswith("model.layers.")}
    norms_too = param_groups(model, OptimConfig(decay_norms_and_biases=False))
    undecayed = {names[id(p)] for g in norms_too if g["weight_decay"] == 0 for p in g["params"]}
    assert "model.norm.weight" in undecayed and "model.local_decoder.in_projection.bias" in undecayed


def test_encoder_loss_weights() -> None:
    assert encoder_loss_weights(LossConfig(), 16) == [0.0, 0.0, 0.0, 0.0, 4.0]  # released: K = 4
    assert encoder_loss_weights(LossConfig(), 4) == [0.0, 0.0, 0.0, 4.0]  # toy: K = min(4, layers - 1)
    assert encoder_loss_weights(LossConfig(encoder_lookahead_weights=[1.0, 2.0]), 4) == [0.0, 1.0, 2.0]
    with pytest.raises(ConfigError, match="encoder_lookahead"):
        encoder_loss_weights(LossConfig(encoder_lookahead=5), 4)
    # K = 0: only the comparison with the teacher's embeddings (it must then be weighted)
    assert encoder_loss_weights(LossConfig(encoder_lookahead=0, encoder_embedding_weight=1.0), 4) == [1.0]
    with pytest.raises(ConfigError, match="encoder_embedding_weight"):
        encoder_loss_weights(LossConfig(encoder_lookahead=0), 4)


@pytest.mark.parametrize("stage, lr, beta2, steps, batch, seed", [
    ("stage1", 7e-4, 0.999, 75_000, 786_432, 0),
    ("stage2", 5.2e-5, 0.95, 150_000, 1_572_864, 1234),
])
def test_unset_fields_take_the_stages_released_values(tmp_path: Path, stage, lr, beta2, steps, batch, seed) -> None:
    extra = {"model": {"path": "m", "teacher": "t"}} if stage == "stage1" else {}
    data = {**BASE, "stage": stage, "data": {"dir": "d"}, **extra}
    del data["global_batch_bytes"]
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.betas[1], cfg.schedule.steps, cfg.global_batch_bytes, cfg.data.seed) == (
        lr, beta2, steps, batch, seed)
    given = load_config(path, ["optim.lr=1e-3", "data.seed=7"])
    assert given.optim.lr == 1e-3 and given.data.seed == 7 and given.schedule.steps == steps

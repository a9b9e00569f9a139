"""`bolmo train` in one process on a tiny teacher made here: the subword stage, stage 1 and stage 2
learn, stage 1 trains exactly the local parts, stage-2 gradients reach the boundary predictor, the
compression schedule reaches the targets, and checkpoints and exports load with `bolmo.load`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bolmo
from bolmo.model.olmo import OlmoForCausalLM
from bolmo.train.distributed import Dist
from bolmo.train.labels import boundary_targets
from bolmo.train.metrics import read_metrics
from bolmo.train.trainer import Trainer, train
from conftest import bits_per_byte_by_hand
from trainer_helpers import TrainEnv, as_config, base_config, build_env
from trainer_helpers import one_thread  # noqa: F401 (module-wide autouse fixture)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> TrainEnv:
    return build_env(tmp_path_factory.getbasetemp() / "trainer_env")


def stage1_config(env: TrainEnv, run_dir: Path, **extra) -> dict:
    return base_config("stage1", run_dir, env.student, env.data, **{"model.teacher": str(env.teacher), **extra})


def stage2_config(env: TrainEnv, run_dir: Path, **extra) -> dict:
    return base_config("stage2", run_dir, env.student, env.data,
                       **{"optim.lr": 1e-3, "optim.betas": [0.9, 0.95], **extra})


def trainer_for(config: dict) -> Trainer:
    return Trainer(as_config(config), Dist(0, 1, torch.device("cpu")))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def assert_learns(rows: list[dict], key: str = "loss") -> None:
    first, last = mean([r[key] for r in rows[:3]]), mean([r[key] for r in rows[-3:]])
    assert last < first, f"{key} did not decrease: {[round(r[key], 3) for r in rows]}"


def test_subword_stage_trains_a_loadable_teacher(env: TrainEnv) -> None:
    assert_learns(read_metrics(env.teacher_run / "metrics.jsonl"))
    teacher = bolmo.load(env.teacher)
    assert isinstance(teacher, OlmoForCausalLM)
    assert 0 < teacher.score(["the model is a patch."])[0].bits_per_byte < 10


def test_stage1_learns_and_its_checkpoint_is_an_olmo_core_bolmo(env: TrainEnv, tmp_path: Path) -> None:
    result = train(as_config(stage1_config(env, tmp_path / "run", **{"schedule.steps": 12,
                                                                   "checkpoint.every": 6})))
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert {"loss/ce", "loss/boundary", "loss/local_decoder", "loss/local_encoder"} <= set(rows[0])
    for key in ("loss", "loss/ce", "loss/local_decoder", "loss/local_encoder", "bpb"):
        assert_learns(rows, key)
    assert rows[-1]["boundary_f1"] > rows[0]["boundary_f1"]
    assert all(r["mfu"] > 0 and r["bytes_per_s"] > 0 for r in rows)

    # keep=2: both checkpoints; `latest` names the last; the step directory loads as a Bolmo model.
    assert (result.run_dir / "latest").read_text().strip() == "step12"
    assert (result.run_dir / "step6").is_dir()
    config = json.loads((result.run_dir / "step12" / "config.json").read_text())
    assert config["model"]["name"] == "bolmo" and config["bolmo_train"]["stage"] == "stage1"
    exported, checkpointed = bolmo.load(result.export), bolmo.load(result.run_dir / "step12")
    assert exported.state_dict().keys() == checkpointed.state_dict().keys()
    assert all(torch.equal(v, checkpointed.state_dict()[k]) for k, v in exported.state_dict().items())
    text = "the model is a patch."
    assert exported.score([text])[0].bits_per_byte == pytest.approx(bits_per_byte_by_hand(exported, text), rel=1e-5)


def test_stage1_trains_exactly_the_local_parts(env: TrainEnv, tmp_path: Path) -> None:
    trainer = trainer_for(stage1_config(env, tmp_path / "run"))
    named = dict(trainer.module.named_parameters())
    frozen = {n for n, p in named.items() if not p.requires_grad}
    blocks = {n for n in named if n.startswith("model.model.layers.")}
    teacher = {n for n in named if n.startswith("teacher.")}
    assert blocks and teacher == {"teacher.embed_tokens.weight", "teacher.norm.weight", "teacher.lm_head.weight"}
    assert frozen == blocks | teacher
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for n, p in named.items() if n not in frozen}

    before = {n: p.detach().clone() for n, p in named.items()}
    trainer.step(1, next(trainer.data.batches(trainer.per_rank)), None)
    changed = {n for n, p in named.items() if not torch.equal(p, before[n])}
    assert changed == set(named) - frozen


def test_stage2_gradients_reach_the_boundary_predictor(env: TrainEnv, tmp_path: Path) -> None:
    trainer = trainer_for(stage2_config(env, tmp_path / "run"))
    assert all(p.requires_grad for p in trainer.module.parameters())
    scales = {id(p): g["lr_scale"] for g in trainer.optimizer.param_groups for p in g["params"]}
    for name, param in trainer.module.model.named_parameters():
        assert scales[id(param)] == (0.5 if name.startswith("model.layers.") else 1.0), name

    batch = next(trainer.data.batches(trainer.per_rank))
    trainer.forward_backward(1, trainer.micro_batches(batch, 1))
    predictor = trainer.module.model.model.local_encoder.boundary_predictor_module
    for param in (predictor.q_proj_layer.weight, predictor.k_proj_layer.weight,
                  trainer.module.model.model.layers[0].self_attn.q_proj.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_compression_schedule_rewrites_targets_per_step(env: TrainEnv, tmp_path: Path) -> None:
    trainer = trainer_for(stage2_config(env, tmp_path / "run", **{
        "compression.kind": "bpe", "compression.start_ratio": 2.0, "compression.target_ratio": 6.0,
        "compression.steps": 10}))
    batch = next(trainer.data.batches(trainer.per_rank))
    realized = []
    for step in (0, 5, 10, 20):
        ratio = trainer.ratio(step)
        assert ratio == pytest.approx(min(2.0 + 0.4 * step, 6.0))
        mb = trainer.micro_batches(batch, step)
        lens = torch.cat([m["patch_lens"] for m in mb])
        n_bytes = torch.cat([(m["labels"] != -100).sum(1) for m in mb])
        per_instance = n_bytes / (lens != 0).sum(1)
        assert bool((per_instance >= ratio - 1e-6).all()), (step, per_instance)
        for m in mb:
            assert "teacher_input_ids" not in m
            assert torch.equal(m["boundary_targets"], boundary_targets(m["input_ids"], m["patch_lens"]))
        realized.append(float(per_instance.mean()))
    assert realized[0] < realized[1] < realized[2] == realized[3]


def test_stage2_learns_with_compression_and_ratio_loss(env: TrainEnv, tmp_path: Path) -> None:
    result = train(as_config(stage2_config(env, tmp_path / "run", **{
        "model.path": str(env.student), "schedule.steps": 10, "compression.kind": "space",
        "compression.start_ratio": 3.0, "compression.target_ratio": 4.5, "compression.steps": 10,
        "losses.weights": {"ratio": 0.5}, "export": False})))
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert_learns(rows, "bpb")  # the fused CE also moves with the compressed targets
    assert rows[-1]["compression_ratio"] == 4.5 and rows[0]["compression_ratio"] == pytest.approx(3.15)
    assert rows[0]["loss/ratio"] > 0 and result.export is None


def test_existing_run_needs_resume(env: TrainEnv, tmp_path: Path) -> None:
    config = stage2_config(env, tmp_path / "run", **{"schedule.steps": 2, "export": False})
    train(as_config(config))
    with pytest.raises(bolmo.ConfigError, match="--resume"):
        train(as_config(config))
    # Changing a setting on resume is allowed (here: more steps), and said.
    with pytest.warns(bolmo.BolmoWarning, match=r"differ from its config.yaml .*schedule.steps: 2 -> 3"):
        resumed = train(as_config({**config, "resume": True, "schedule": {**config["schedule"], "steps": 3}}))
    assert [r["step"] for r in read_metrics(resumed.run_dir / "metrics.jsonl")] == [1, 2, 3]

"""`bolmo train` across processes: a 2-process gloo run (torchrun, FSDP2) follows the 1-process run
of the same global batch, and a run killed with SIGKILL after a checkpoint resumes to exactly the
losses of an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bolmo
from bolmo.train.metrics import read_metrics
from bolmo.train.trainer import train
from trainer_helpers import TrainEnv, as_config, base_config, build_env, cli_env, run_cli, write_config
from trainer_helpers import one_thread  # noqa: F401 (module-wide autouse fixture)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> TrainEnv:
    return build_env(tmp_path_factory.getbasetemp() / "trainer_env")


def stage_config(env: TrainEnv, stage: str, run_dir: Path, **extra) -> dict:
    if stage == "stage1":
        extra = {"model.teacher": str(env.teacher), **extra}
    else:
        extra = {"optim.lr": 1e-3, "optim.betas": [0.9, 0.95], **extra}
    return base_config(stage, run_dir, env.student, env.data, **extra)


@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_two_gloo_processes_match_one_process(env: TrainEnv, tmp_path: Path, stage: str) -> None:
    steps = {"schedule.steps": 4, "checkpoint.every": 4}
    config = as_config(stage_config(env, stage, tmp_path / "one", **steps, export=False))
    single = train(config)
    yaml = write_config(stage_config(env, stage, tmp_path / "two", **steps), tmp_path / "two.yaml")
    run_cli("train", str(yaml), torchrun=2)

    one, two = read_metrics(single.run_dir / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    weighted = [f"loss/{name}" for name, w in config.loss_weights().items() if w]  # ratio: per micro-batch
    for a, b in zip(one, two):
        for key in ("loss", *weighted):
            assert abs(a[key] - b[key]) < 1e-5, (a["step"], key, a[key], b[key])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)

    # The checkpoint is sharded over the two ranks and still loads as one model, equal to the export.
    shards = sorted(p.name for p in (tmp_path / "two" / "step4" / "model_and_optim").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]
    checkpointed, exported = bolmo.load(tmp_path / "two" / "step4"), bolmo.load(tmp_path / "two" / "hf")
    assert all(torch.equal(v, checkpointed.state_dict()[k]) for k, v in exported.state_dict().items())


@pytest.mark.slow
def test_killed_run_resumes_exactly(env: TrainEnv, tmp_path: Path) -> None:
    """Stage 2 with a BPE compression schedule and the ratio loss: every piece of loop state (data
    position, optimizer moments, schedules) must come back from the checkpoint."""
    config = stage_config(env, "stage2", tmp_path / "unused", **{
        "schedule.steps": 30, "checkpoint.every": 5, "checkpoint.keep": 1, "export": False,
        "compression.kind": "bpe", "compression.start_ratio": 3.0, "compression.target_ratio": 5.0,
        "compression.steps": 20, "losses.weights": {"ratio": 0.5}})
    yaml = write_config(config, tmp_path / "train.yaml")
    run_cli("train", str(yaml), f"run_dir={tmp_path / 'straight'}")

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bolmo.cli", "train", str(yaml), f"run_dir={killed}"],
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # no deadline of its own: on a busy machine the first checkpoint may take long (pytest-timeout bounds it)
        while not (killed / "latest").is_file() and proc.poll() is None:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    at_kill = (killed / "latest").read_text().strip()
    assert at_kill != "step30"

    run_cli("train", str(yaml), f"run_dir={killed}", "--resume")
    straight, resumed = read_metrics(tmp_path / "straight" / "metrics.jsonl"), read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 31))
    for a, b in zip(straight, resumed):
        assert (a["loss"], a["grad_norm"], a["loss/ce"]) == (b["loss"], b["grad_norm"], b["loss/ce"]), (at_kill, a["step"])

"""Fault injection (issue 12): `convert` and `train` killed by SIGKILL, SIGTERM and SIGINT at random
moments. Afterwards the source is intact and the destination is absent or complete (with
--overwrite: the old or the new one, complete); after the next run nothing temporary is left."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CKPT_FIXTURES

from bolmo.checkpoint.convert import convert
from bolmo.checkpoint.sources import open_checkpoint
from trainer_helpers import TrainEnv, base_config, build_env, write_config
from trainer_helpers import one_thread  # noqa: F401 (module-wide autouse fixture)

WORKER = Path(__file__).with_name("fault_worker.py")
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_worker(trials: list[dict], tmp_path: Path) -> list[dict]:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(trials))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(WORKER), str(spec)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "escaped:" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_convert_killed_at_random_moments(tmp_path):
    rng = random.Random(12)
    src = tmp_path / "src"
    shutil.copytree(CKPT_FIXTURES / "olmo2", src)
    before = digest(src)
    reference = convert(src, tmp_path / "reference", "hf").destination
    expected = digest(reference)
    cases = []
    for i, signum in enumerate(SIGNALS * 2):
        parent = tmp_path / f"trial{i}"
        parent.mkdir()
        overwrite = i >= len(SIGNALS)  # the second round replaces an existing output
        if overwrite:
            shutil.copytree(reference, parent / "out")
        cases.append((parent, overwrite, int(signum)))
    args = [["convert", str(src), str(parent / "out"), "--to", "hf", "--overwrite"] for parent, _, _ in cases]
    killed = run_worker([{"args": a if overwrite else a[:-1], "signal": signum, "delay": rng.uniform(0.0, 0.4)}
                         for a, (_, overwrite, signum) in zip(args, cases)], tmp_path)
    for (parent, overwrite, signum), result in zip(cases, killed):
        out = parent / "out"
        if out.exists():  # absent or complete; with --overwrite the old or the new one, both complete
            assert digest(out) == expected, (parent, signum, result)
        else:  # with --overwrite, only a kill between the swap's two renames, which the next run undoes
            assert not overwrite or any(n.startswith(".out.old-") for n in hidden(parent)), (parent, signum, result)
    reruns = run_worker([{"args": a} for a in args], tmp_path)  # the next run
    for (parent, _, signum), killed_result, rerun in zip(cases, killed, reruns):
        assert rerun == {"exit": 0}, (parent, signum, killed_result, rerun)
        assert digest(parent / "out") == expected and hidden(parent) == [], (parent, signum, hidden(parent))
    assert digest(src) == before


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> TrainEnv:
    return build_env(tmp_path_factory.getbasetemp() / "trainer_env")


def test_train_killed_at_random_moments(env: TrainEnv, tmp_path):
    rng = random.Random(3)
    sources = {p: digest(p) for p in (env.student, env.data)}
    trials, runs = [], []
    for i, signum in enumerate(SIGNALS):
        run_dir = tmp_path / f"run{i}"
        config = write_config(base_config("stage2", run_dir, env.student, env.data,
                                          **{"schedule.steps": 4, "checkpoint.every": 1, "checkpoint.keep": 2}),
                              tmp_path / f"config{i}.yaml")
        trials += [{"args": ["train", str(config)], "signal": int(signum), "delay": rng.uniform(0.5, 3.0)},
                   {"args": ["train", str(config), "--resume"]}]
        runs.append(run_dir)
    results = run_worker(trials, tmp_path)
    for run_dir, killed, resumed in zip(runs, results[::2], results[1::2]):
        assert resumed == {"exit": 0}, (run_dir, killed, resumed)
        assert (run_dir / "latest").read_text().strip() == "step4"
        steps = sorted(p.name for p in run_dir.glob("step*"))
        assert steps == ["step3", "step4"] and hidden(run_dir) == [], (killed, steps, hidden(run_dir))
        for step in steps:
            source = open_checkpoint(run_dir / step)
            assert source.reader.problems() == [] and not [n for n in source.notes if "incomplete" in n]
        assert (run_dir / "hf" / "model.safetensors").is_file() and hidden(run_dir / "hf") == []
    assert {p: digest(p) for p in sources} == sources

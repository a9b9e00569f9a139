"""Builders for the trainer tests: a small text corpus, a byte-level BPE tokenizer trained on it,
prepared data, a tiny subword OLMo teacher (trained for a few steps with `stage: subword`) and its
`bolmo byteify-init` student. Everything is seeded, so every build gives the same files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

WORDS = ("the a of to in is it that for on with as was by be this are from or at an which have not but "
         "byte model patch token train stage loss teacher student global local boundary encoder decoder "
         "python list value return import class function module number string text file data").split()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process training on one thread (restored afterwards): on a shared 2-core machine, torch's
    spinning worker threads next to another busy process slow tiny runs down tenfold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_corpus(directory: Path, n_docs: int = 24, seed: int = 0) -> Path:
    """n_docs small documents (about 12 KB in all) of seeded pseudo-sentences."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        sentences = []
        for _ in range(rng.randint(4, 8)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 12))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
        (directory / f"doc{i:03d}.txt").write_text(" ".join(sentences) + "\n")
    return directory


def teacher_init_dir(tokenizer: Path, out: Path, d: int = 32, layers: int = 2) -> Path:
    """config.json of a tiny OLMo 2 model plus its tokenizer: the `stage: subword` starting point."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    config = {"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "vocab_size": len(vocab),
              "hidden_size": d, "intermediate_size": 2 * d, "num_hidden_layers": layers, "num_attention_heads": 4,
              "num_key_value_heads": 4, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
              "rope_theta": 500000.0, "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab["<|pad|>"],
              "bos_token_id": None, "tie_word_embeddings": False}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((tokenizer / name).read_bytes())
    return out


def base_config(stage: str, run_dir: Path, model: Path, data: Path, **extra) -> dict:
    """A tiny run: S = 16 tokens, L = 64 bytes, 4 instances per step in micro-batches of 2."""
    config = {
        "stage": stage, "run_dir": str(run_dir), "model": {"path": str(model)},
        "data": {"dir": str(data), "tokens_per_instance": 16, "seq_len": 64},
        "global_batch_bytes": 256, "micro_batch_instances": 2, "seed": 7,
        "optim": {"lr": 3e-3}, "schedule": {"steps": 6, "warmup_fraction": 0.0, "decay": "constant"},
        "checkpoint": {"every": 100, "keep": 2},
        "logging": {"every": 1, "progress": False, "plot": False},
        "peak_flops": 1e11,
    }
    for key, value in extra.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def as_config(config: dict):
    """The validated TrainConfig of a config dict."""
    from bolmo.train.config import TrainConfig, from_dict

    out = from_dict(TrainConfig, config, "")
    out.validate()
    return out


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def cli_env() -> dict[str, str]:
    """Environment for `bolmo` subprocesses: one thread each, so runs are bit-reproducible."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_cli(*args: str, torchrun: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m bolmo.cli ARGS` (under torchrun with N processes when asked), checked. On a
    timeout the whole process group (torchrun's workers too) is killed."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(torchrun),
                 "--standalone", "-m", "bolmo.cli"] if torchrun else [sys.executable, "-m", "bolmo.cli"])
    proc = subprocess.Popen([*launcher, *args], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@dataclass
class TrainEnv:
    data: Path  # prepared data
    teacher: Path  # HF export of the tiny subword teacher
    student: Path  # its byteify-init output
    teacher_run: Path  # the subword run that trained the teacher


def build_env(base: Path) -> TrainEnv:
    """Corpus -> tokenizer -> `bolmo prepare` -> tiny teacher (20 subword steps) -> byteify-init.
    Built once per test session under `base` (a `done` marker makes later calls reuse it)."""
    env = TrainEnv(base / "data", base / "teacher_run" / "hf", base / "bolmo_init", base / "teacher_run")
    if (base / "done").is_file():
        return env
    from bolmo.byteify import ByteifyOptions, byteify_init
    from bolmo.train.bpe import train_bpe
    from bolmo.train.prepare import PrepareConfig, prepare
    from bolmo.train.trainer import train

    corpus = write_corpus(base / "corpus")
    tokenizer = train_bpe(sorted(corpus.glob("*.txt")), base / "tokenizer", vocab_size=400)
    prepare(PrepareConfig(inputs=[corpus], tokenizer=tokenizer, out=env.data, progress=False))
    init = teacher_init_dir(tokenizer, base / "teacher_init")
    config = base_config("subword", env.teacher_run, init, env.data, **{"model.random_init": True,
                         "schedule.steps": 20, "optim.lr": 1e-2})
    train(as_config(config))
    byteify_init(env.teacher, env.student, ByteifyOptions(decoder_layers=2, local_heads=2))
    (base / "done").write_text("")
    return env

"""The reference implementation, timed in the same run as bolmo: the random model is saved as an
HF directory and loaded by the reference's own code in a subprocess with the reference's venv
(bolmo's environment cannot import it: a different transformers). `--reference PATH` on the
benchmark scripts points at a checkout of the reference code (../shared/reference here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from common import FIXTURE_MODEL
from bolmo.nn.freed_memory import GLIBC_ENVIRONMENT

DEFAULT_PYTHON = Path.home() / ".cache" / "bolmo-reference-venv" / "bin" / "python"
WORKER = Path(__file__).resolve().parent / "reference_worker.py"


def add_allocator_argument(parser) -> None:
    """--reference-allocator: the reference as it ships, or with bolmo's allocator settings."""
    parser.add_argument("--reference-allocator", choices=["default", "bolmo"], default="default",
                        help="the reference's C allocator: glibc's defaults as it ships (default), or the settings "
                             "bolmo.load applies (bolmo.nn.freed_memory), to see what they are worth on each side")


def save_hf(model, directory: Path) -> Path:
    """Write `model` as an HF directory the reference loads (its subword tokenizer copied beside
    the weights and named by absolute path, which the reference resolves without the Hub)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = directory / "subword_tokenizer"
    if not tokenizer_dir.exists():
        shutil.copytree(FIXTURE_MODEL / "subword_tokenizer", tokenizer_dir)
    config = model.config.to_dict()
    config["tokenizer_config"]["original_identifier"] = str(tokenizer_dir.resolve())
    config.setdefault("architectures", ["BolmoForCausalLM"])
    config["model_type"] = "bolmo"
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


class Reference:
    """A running reference worker for one model directory."""

    def __init__(self, reference: Path, model_dir: Path, threads: int, python: Path = DEFAULT_PYTHON,
                 device: str = "cpu", dtype: str = "float32", allocator: str = "default") -> None:
        if not (reference / "refbolmo" / "modeling_bolmo.py").is_file():
            sys.exit(f"--reference {reference}: no refbolmo/modeling_bolmo.py there")
        if not python.is_file():
            sys.exit(f"the reference venv is missing ({python}): run {reference}/setup.sh")
        env = dict(os.environ, PYTHONPATH=str(reference.resolve()), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
        if allocator == "bolmo":
            env.update(GLIBC_ENVIRONMENT)
        self.process = subprocess.Popen([str(python), "-u", str(WORKER), str(model_dir), str(threads), device, dtype],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                        cwd=str(model_dir))
        self._read()  # {"ready": true}

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            sys.exit("the reference worker exited (see its error above)")
        return json.loads(line)

    def request(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def generate(self, ids: list[list[int]], new_bytes: int) -> dict:
        return self.request(op="generate", ids=ids, new_bytes=new_bytes)

    def forward(self, ids: torch.Tensor) -> float:
        return self.request(op="forward", ids=ids.tolist())["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)

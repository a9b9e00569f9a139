"""The bundled model names (`default`, `default-teacher`) work in every checkpoint command as in
`bolmo.load`, and the Python example of docs/checkpoints.md runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bolmo.checkpoint.convert import convert
from bolmo.checkpoint.model_config import read_model_config
from bolmo.checkpoint.sources import bundled_or_path
from bolmo.checkpoint.verify import verify_directory
from bolmo.cli import main
from bolmo.config import BolmoConfig
from bolmo.errors import CheckpointError
from bolmo.loading import BUNDLED_MODELS, resolve_source
from bolmo.olmo.config import OlmoConfig
from conftest import CKPT_FIXTURES

DOCS = Path(__file__).resolve().parents[1] / "docs" / "checkpoints.md"


@pytest.mark.parametrize("argv", [
    ["inspect", "default"],
    ["inspect", "default-teacher", "--json"],
    ["verify", "default"],
    ["verify", "default-teacher"],
    ["convert", "default", "{out}", "--to", "hf"],
    ["convert", "default-teacher", "{out}", "--to", "olmo-core"],
    ["byteify-init", "--teacher", "default-teacher", "--out", "{out}", "--decoder-layers", "1"],
    ["merge", "--bolmo", "default", "--base", "default-teacher", "--post", "default-teacher", "--out", "{out}"],
])
def test_checkpoint_commands_accept_the_bundled_names(tmp_path, argv):
    out = tmp_path / "out"
    assert main([a.format(out=out) for a in argv]) == 0


def test_library_functions_accept_the_bundled_names(tmp_path):
    assert isinstance(read_model_config("default")[0], BolmoConfig)
    assert isinstance(read_model_config("default-teacher")[0], OlmoConfig)
    assert verify_directory("default").ok
    assert convert("default", tmp_path / "hf", "hf").destination == tmp_path / "hf"


def test_one_resolver_and_local_paths_win(tmp_path, monkeypatch):
    for name, directory in BUNDLED_MODELS.items():
        assert bundled_or_path(name) == resolve_source(name) == directory
    assert resolve_source(None) == bundled_or_path(None) == BUNDLED_MODELS["default"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    assert bundled_or_path("default") == Path("default")
    with pytest.raises(CheckpointError, match="default: not a checkpoint"):
        read_model_config("default")


def test_docs_python_example_runs(tmp_path, monkeypatch):
    """The example's paths are placeholders: a training checkpoint with EMA (run/step5000) and a
    native Bolmo checkpoint (Bolmo-7B/olmo_core); the fixtures stand in for them."""
    code = re.search(r"## Python\n\n```python\n(.*?)```", DOCS.read_text(), re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "step5000").symlink_to(CKPT_FIXTURES / "fsdp_sharded" / "checkpoint")
    (tmp_path / "Bolmo-7B").mkdir()
    (tmp_path / "Bolmo-7B" / "olmo_core").symlink_to(CKPT_FIXTURES / "bolmo_olmo_core")
    exec(compile(code, str(DOCS), "exec"), {})
    assert (tmp_path / "out" / "ema-hf" / "model.safetensors").is_file()

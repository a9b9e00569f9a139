"""Hostile-user trial: an empty destination, a prepare output that is a file, config sizes that
overflow torch, the meta device, a full disk or closed stdout, an unusable TORCHINDUCTOR_CACHE_DIR,
and the torch.compile fallback paid (and announced) once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bolmo.cli import main

from conftest import BOLMO_FIXTURES

ROOT = Path(__file__).resolve().parents[1]
TINY = BOLMO_FIXTURES / "tiny-gqa"


def _bolmo(*args: str, env: dict | None = None, shell_redirect: str = "") -> subprocess.CompletedProcess:
    command = " ".join([f'"{sys.executable}"', "-m", "bolmo.cli", *(f"'{a}'" for a in args)]) + shell_redirect
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize("argv", [
    ["convert", str(TINY), "", "--to", "olmo-core", "--overwrite", "--overwrite"],
    ["merge", "--bolmo", "default", "--base", "default-teacher", "--post", "default-teacher", "--out", ""],
    ["prepare", str(TINY), "--tokenizer", "default-teacher", "--out", ""],
])
def test_an_empty_destination_is_refused_not_the_current_directory(tmp_path, monkeypatch, argv):
    """`--out "$UNSET"` was Path(""), the current directory: convert --overwrite --overwrite replaced
    it (whatever it held), prepare wrote its shards into it."""
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_prepare_output_that_is_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    doc = tmp_path / "doc.txt"
    doc.write_text("hello world")
    assert main(["prepare", str(doc), "--tokenizer", "default-teacher",
                 "--out", str(blocker), "--no-progress"]) == 2
    assert f"{blocker}: exists and is not a directory" in capsys.readouterr().err
    assert main(["prepare", str(doc), "--tokenizer", "default-teacher",
                 "--out", str(blocker / "sub"), "--no-progress"]) == 2
    assert "cannot create the output directory" in capsys.readouterr().err


def test_config_sizes_that_overflow_torch_are_a_config_error(tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(TINY, model)
    config = json.loads((model / "config.json").read_text())
    config["hidden_size"] = 10**12
    (model / "config.json").write_text(json.dumps(config))
    for argv in (["info", str(model)], ["generate", "hi", "--model", str(model)],
                 ["convert", str(model), str(tmp_path / "out"), "--to", "olmo-core"]):
        assert main(argv) == 2, argv
        assert "too large to build" in capsys.readouterr().err
    assert main(["verify", str(model)]) == 1
    assert "too large to build" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_meta_device_is_refused_before_loading():
    import bolmo
    from bolmo.errors import DeviceError

    with pytest.raises(DeviceError, match="meta"):
        bolmo.load(TINY, device="meta")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["info"], ["info", "--json"], ["generate", "Hi", "--max-new-bytes", "8"]])
def test_stdout_on_a_full_disk_is_one_line(args):
    done = _bolmo(*args, shell_redirect=" > /dev/full")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2
    assert done.stderr.strip().endswith("cannot write the output (No space left on device)")


def test_closed_stdout_is_not_a_traceback():
    done = _bolmo("generate", "Hi", "--max-new-bytes", "8", shell_redirect=" >&-")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0


def test_unusable_inductor_cache_dir_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = _bolmo("generate", "Hi", "--max-new-bytes", "4", env={"TORCHINDUCTOR_CACHE_DIR": str(blocker / "cache")})
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2
    assert f"TORCHINDUCTOR_CACHE_DIR={blocker / 'cache'}: cannot create it" in done.stderr


def test_compile_failure_is_paid_and_announced_once(monkeypatch, caplog):
    """Without a C++ compiler both step functions (local and patch) failed to compile in turn, each
    printing the notice and each costing a compilation attempt."""
    from bolmo.generation import compiled

    attempts = []

    def broken_compile(fn, mode=None, dynamic=None):
        def call(*args):
            attempts.append(fn.__name__)
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return call

    monkeypatch.setattr(compiled.torch, "compile", broken_compile)
    failed: list[str] = []

    def local_step(x):
        return x + 1

    def patch_step(x):
        return x * 2

    local = compiled._CompiledOrEager(local_step, None, failed)
    patch = compiled._CompiledOrEager(patch_step, None, failed)
    with caplog.at_level("WARNING", logger="bolmo"):
        assert local(1) == 2 and patch(3) == 6 and local(2) == 3 and patch(4) == 8
    assert attempts == ["local_step"]
    assert sum("torch.compile is unavailable" in r.getMessage() for r in caplog.records) == 1


def test_a_full_disk_under_an_output_file_keeps_what_stdout_had(monkeypatch, capsys):
    """ENOSPC from writing a file (no filename on the error, as for write() on an open file) while
    standard output is fine: one line, and what was printed before still comes out."""
    import errno

    from bolmo.cli import model_commands

    def full(args):
        print("partial table")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model_commands, "run_info", full)
    assert main(["info"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "partial table\n"
    assert captured.err.strip() == "bolmo info: error: cannot write the output (No space left on device)"


def test_previous_contents_that_cannot_be_deleted_are_named(tmp_path, monkeypatch):
    """--overwrite replaced the destination but a file of the old one could not be deleted
    (immutable, another owner's): the leftover stayed in a hidden sibling, unmentioned."""
    from bolmo.checkpoint import atomic
    from bolmo.errors import BolmoWarning

    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "config.json").write_text("{}")
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda path, ignore_errors=False: None)  # deletes nothing
    with pytest.warns(BolmoWarning, match="previous contents could not all be deleted; they are in ") as caught:
        with atomic.atomic_directory(dst, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    leftover = Path(str(caught[0].message).rsplit("they are in ", 1)[1])
    assert (dst / "new.txt").is_file() and (leftover / "config.json").is_file()


def test_missing_and_extra_tensors_name_the_checkpoint(tmp_path):
    """`generate` / `score` / bolmo.load said "checkpoint lacks 1 tensor(s) ..." without saying which."""
    import bolmo
    from bolmo.errors import CheckpointError
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(TINY, model)
    tensors = load_file(model / "model.safetensors")
    norm = tensors.pop("model.norm.weight")
    save_file(tensors, model / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"^{model}: the checkpoint lacks 1 tensor\(s\) .*model\.norm\.weight"):
        bolmo.load(model)
    save_file({**tensors, "model.norm.weight": norm, "extra.weight": norm.clone()}, model / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"^{model}: the checkpoint has 1 tensor\(s\) this model does not use"):
        bolmo.load(model)


def test_stdin_scored_twice_is_refused(capsys):
    assert main(["score", "-", "-"]) == 2
    assert "standard input (-) can be scored once" in capsys.readouterr().err


def test_a_device_error_is_one_short_line():
    """An unsupported backend (mps on this build) made a one-line error of ~1,200 characters."""
    import torch

    from bolmo.errors import DeviceError

    if torch.backends.mps.is_available():
        pytest.skip("mps works on this machine")
    from bolmo.loading import check_device

    with pytest.raises(DeviceError) as error:
        check_device("mps")
    assert len(str(error.value)) < 260 and "\n" not in str(error.value)


def test_download_into_a_file_says_so(tmp_path, capsys):
    target = tmp_path / "a.txt"
    target.write_text("x")
    assert main(["download", "1b", "-o", str(target)]) == 2
    assert f"{target}: not a directory" in capsys.readouterr().err

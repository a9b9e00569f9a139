"""Issue 12 on files: an index cannot reach outside its checkpoint, the final rename never replaces
what the run did not decide to replace, --overwrite needs to be told twice for a directory that is
not a checkpoint, a swap cut by a kill is undone by the next run, Ctrl-C inside torch's reader
is an interruption (not damage), and inspect says when what it lists is broken."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CKPT_FIXTURES

import bolmo
from bolmo.checkpoint.atomic import atomic_directory
from bolmo.checkpoint.convert import convert
from bolmo.checkpoint.interrupts import signals_held
from bolmo.checkpoint.verify import verify_directory
from bolmo.cli import main
from bolmo.errors import CheckpointError


@pytest.fixture()
def model_copy(tmp_path, tiny_model_dir):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst, ignore=shutil.ignore_patterns("cases.*"))
    return dst


def _index_to(model_dir: Path, target: str) -> None:
    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", "pt") as f:
        names = list(f.keys())
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: target for n in names}}))


@pytest.mark.parametrize("target", ["../outside/model.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_cannot_name_files_outside_the_checkpoint(model_copy, tmp_path, target):
    (tmp_path / "outside").mkdir()
    _index_to(model_copy, target)
    shutil.move(model_copy / "model.safetensors", tmp_path / "outside" / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a file inside"):
        bolmo.load(model_copy)
    with pytest.raises(CheckpointError, match="not a file inside"):
        convert(model_copy, tmp_path / "out", "olmo-core")
    assert not verify_directory(model_copy).ok and not (tmp_path / "out").exists()


def test_index_may_name_shards_in_a_subdirectory(model_copy):
    (model_copy / "weights").mkdir()
    _index_to(model_copy, "weights/model.safetensors")
    shutil.move(model_copy / "model.safetensors", model_copy / "weights" / "model.safetensors")
    assert bolmo.load(model_copy).score(["ok"])[0].n_bytes == 2


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("overwrite", [False, True])
def test_destination_created_during_the_run_is_never_replaced(tmp_path, overwrite):
    dst = tmp_path / "out"
    if overwrite:
        dst.mkdir()  # what --overwrite agreed to replace ...
    with pytest.raises(CheckpointError, match="appeared while this run was writing"):
        with atomic_directory(dst, overwrite=overwrite) as tmp:
            (tmp / "config.json").write_text("{}")
            if overwrite:
                dst.rename(tmp_path / "moved")  # ... is replaced by someone else's directory
            dst.mkdir()
            (dst / "theirs.txt").write_text("keep me")
    assert (dst / "theirs.txt").read_text() == "keep me" and _leftovers(tmp_path) == []


def test_overwrite_once_replaces_only_checkpoints(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    src = str(CKPT_FIXTURES / "olmo2")
    assert main(["convert", src, str(notes), "--to", "hf", "--overwrite"]) == 2
    assert "--overwrite twice" in capsys.readouterr().err and (notes / "thesis.tex").is_file()
    assert main(["convert", src, str(notes), "--to", "hf", "--overwrite", "--overwrite"]) == 0
    assert not (notes / "thesis.tex").exists() and (notes / "config.json").is_file()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_swap_cut_by_a_kill_is_undone_by_the_next_run(tmp_path):
    dst = tmp_path / "out"
    convert(CKPT_FIXTURES / "olmo2", dst, "hf")
    before = sorted(p.name for p in dst.iterdir())
    # Killed between moving the old destination aside and renaming the new one into place:
    aside = tmp_path / f".out.old-{_dead_pid()}-deadbeef"
    dst.rename(aside)
    with pytest.raises(CheckpointError, match="destination exists"):  # the old one is back, so not replaced
        convert(CKPT_FIXTURES / "olmo2", dst, "hf")
    assert sorted(p.name for p in dst.iterdir()) == before and _leftovers(tmp_path) == []
    # Killed after the new one was in place, before the old one was deleted: the copy is garbage.
    shutil.copytree(dst, tmp_path / f".out.old-{_dead_pid()}-0badf00d")
    convert(CKPT_FIXTURES / "olmo2", dst, "hf", overwrite=True)
    assert _leftovers(tmp_path) == []


def test_fresh_leftover_of_a_dead_run_is_swept_at_once(tmp_path):
    import socket

    leftover = tmp_path / f".out.tmp-{socket.gethostname()}-{_dead_pid()}-abcd1234"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    convert(CKPT_FIXTURES / "olmo2", tmp_path / "out", "hf")
    assert _leftovers(tmp_path) == []


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler for the test, even when pytest was started with SIGINT ignored
    (as a background job of a non-interactive shell is: Python then installs no handler)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_signals_are_held_then_delivered(python_sigint):
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            signal.raise_signal(signal.SIGINT)
            reached.append(True)  # not interrupted in the middle
    assert reached == [True]


def test_ctrl_c_inside_torchs_reader_is_an_interruption(monkeypatch, tmp_path, python_sigint):
    """torch's zip reader calls back into Python; a KeyboardInterrupt raised in such a callback
    comes back out as another error (seen: AttributeError: '_ByteRange' object has no attribute
    'read'), which used to be reported as a corrupt item. Simulated here the way it happens."""
    from bolmo.checkpoint import dcp_reader

    load = dcp_reader.torch.load
    calls = []

    def load_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            try:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C arrives inside the C++ reader ...
            except KeyboardInterrupt:
                raise AttributeError("'_ByteRange' object has no attribute 'read'") from None  # ... mangled
        return load(*args, **kwargs)

    monkeypatch.setattr(dcp_reader.torch, "load", load_interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(CKPT_FIXTURES / "olmo2", tmp_path / "out", "hf")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_inspect_reports_broken_files(tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    assert main(["inspect", str(tmp_path / "junk.safetensors")]) == 2
    assert "junk.safetensors" in capsys.readouterr().err
    broken = tmp_path / "truncated"
    shutil.copytree(CKPT_FIXTURES / "olmo2", broken)
    shard = broken / "model_and_optim" / "__0_1.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    assert main(["inspect", str(broken), "--json"]) == 1
    captured = capsys.readouterr()
    assert "__0_1.distcp" in captured.err and json.loads(captured.out)["problems"]
    os.remove(shard)
    assert main(["inspect", str(broken)]) == 1
    assert "missing" in capsys.readouterr().err


def test_symlink_loops_are_one_line_errors(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    src = str(CKPT_FIXTURES / "olmo2")
    for args in (["convert", str(loop), str(tmp_path / "a"), "--to", "hf"],
                 ["convert", src, str(loop / "out"), "--to", "hf"],
                 ["convert", src, str(loop), "--to", "hf", "--overwrite"],
                 ["byteify-init", "--teacher", str(loop), "--out", str(tmp_path / "b")],
                 ["byteify-init", "--teacher", src, "--out", str(loop)],
                 ["merge", "--bolmo", str(loop), "--base", src, "--post", src, "--out", str(tmp_path / "c")]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, (args, err)


def test_read_only_destination_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):  # what a read-only parent directory does (root ignores chmod, so simulated)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert main(["convert", str(CKPT_FIXTURES / "olmo2"), str(tmp_path / "out"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert "cannot create the destination (Permission denied)" in err and err.count("\n") == 1

"""Issue 12: long prompts, NaN weights, bad devices and odd arguments give a result or a one-line
BolmoError (exit 2 in the CLI), never a traceback or a silent wrong answer."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import bolmo
from bolmo.cli import build_parser, main
from bolmo.errors import CheckpointError, ContextWarning, DeviceError, GenerationError
from conftest import load_fixture_model


@pytest.fixture()
def short_model_dir(tmp_path, tiny_model_dir):
    """The tiny model, its config claiming only 16 positions."""
    dst = tmp_path / "short"
    shutil.copytree(tiny_model_dir, dst, ignore=shutil.ignore_patterns("cases.*"))
    config = json.loads((dst / "config.json").read_text())
    config["max_position_embeddings"] = 16
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_long_prompt_keeps_the_last_part_that_fits_and_says_so(short_model_dir):
    model = bolmo.load(short_model_dir)
    prompt = "The quick brown fox jumps over the lazy dog."
    with pytest.warns(ContextWarning, match=r"kept its last 11 of 44 bytes"):
        long = model.generate([prompt], max_new_bytes=4)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the last 11 bytes fit: no warning
        assert long == model.generate([prompt.encode()[-11:].decode()], max_new_bytes=4)[0]
    with pytest.warns(ContextWarning, match=r"7 of them kept for the continuation\): kept its last 8 of 40 bytes"):
        model.generate(["x" * 40], max_new_bytes=16)  # a long generation keeps half the context for the prompt


def test_generating_past_the_context_says_so_once(short_model_dir):
    """Before: a generation whose patches went past the model's positions said nothing."""
    from bolmo.generation import generate_ids

    model = bolmo.load(short_model_dir)
    positions = model.config.context_positions
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = generate_ids(model, ["ab"], max_new_bytes=8 * positions)[0]
    messages = [str(w.message) for w in caught if issubclass(w.category, ContextWarning)]
    used, passed_at = 1 + sum(result.prompt_boundaries), None  # the start id, then one per closed patch
    for n, closes in enumerate(result.boundaries, 1):
        used += closes
        if used > positions and passed_at is None:
            passed_at = n
    assert passed_at is not None  # the test's premise: this generation does pass the context
    assert messages == [f"row 0 passed the model's context ({positions:,} positions) after {passed_at:,} new "
                        "bytes: what follows is generated at positions the model was not trained on"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the context: nothing to say
        generate_ids(model, ["ab"], max_new_bytes=2)


def test_cli_prints_the_context_warning_on_one_line(short_model_dir, capsys):
    assert main(["generate", "x" * 40, "--model", str(short_model_dir), "--max-new-bytes", "3"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("bolmo generate: warning: prompt 0 is longer than the model's context") and err.count("\n") == 1


@pytest.mark.parametrize("kwargs", [{"stop": 5}, {"stop": ["ok", 5]}, {"stop": b"x"}, {"stop": "\ud800"}])
def test_bad_stop_is_a_generation_error(tiny_model_dir, kwargs):
    with pytest.raises(GenerationError, match="stop"):
        load_fixture_model(tiny_model_dir).generate(["a"], max_new_bytes=2, **kwargs)


def test_surrogate_prompt_is_a_generation_error(tiny_model_dir):
    with pytest.raises(GenerationError, match=r"prompts\[1\] cannot be encoded as UTF-8"):
        load_fixture_model(tiny_model_dir).generate(["ok", "bad \udcff"], max_new_bytes=2)


def _poison(model_dir, name: str, value: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> None:
    tensors = load_file(model_dir / "model.safetensors")
    if value is not None:
        tensors[name] = tensors[name].clone().fill_(value)
    if dtype is not None:
        tensors[name] = tensors[name].to(dtype)
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})


def test_nan_weights_are_refused_at_load(short_model_dir):
    _poison(short_model_dir, "lm_head.weight", math.nan)
    with pytest.raises(CheckpointError, match=r"'lm_head.weight' holds NaN"):
        bolmo.load(short_model_dir)
    assert main(["score", str(short_model_dir / "config.json"), "--model", str(short_model_dir)]) == 2


def test_integer_weight_is_refused_at_load(short_model_dir):
    _poison(short_model_dir, "lm_head.weight", dtype=torch.int32)
    with pytest.raises(CheckpointError, match=r"'lm_head.weight' has dtype int32"):
        bolmo.load(short_model_dir)


def test_nan_at_run_time_is_a_generation_error(short_model_dir):
    model = bolmo.load(short_model_dir)
    with torch.no_grad():
        model.lm_head.weight.fill_(math.nan)
    with pytest.raises(GenerationError, match="NaN"):
        model.generate(["abc"], max_new_bytes=3)


@pytest.mark.parametrize("device", ["bogus", "cuda:99" if torch.cuda.is_available() else "cuda", "cpu:x"])
def test_unusable_device_is_a_device_error(tiny_model_dir, device, capsys):
    with pytest.raises(DeviceError, match="not usable here"):
        bolmo.load(tiny_model_dir, device=device)
    assert main(["generate", "x", "--model", str(tiny_model_dir), "--device", device]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_score_refuses_empty_files_directories_and_symlink_loops(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for bad, message in (("empty.txt", "empty, nothing to score"), (".", "cannot read"), ("loop", "cannot read")):
        assert main(["score", str(tmp_path / bad), "--model", str(tiny_model_dir)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_every_score_option_is_described():
    parser = build_parser()
    score = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "score")[1]
    undocumented = [a.dest for a in score._actions if not a.help]
    assert undocumented == []


def test_score_table_never_cuts_file_names(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    name = tmp_path / ("a_rather_long_file_name_that_would_not_fit_in_a_narrow_column_" * 2 + ".txt")
    name.write_text("hello world")
    assert main(["score", str(name), "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    cells = [line.split("│")[1].strip() for line in out.splitlines() if line.count("│") >= 4]
    assert "…" not in out and str(name) in "".join(cells)


def test_generate_takes_invalid_utf8_from_stdin_and_argv(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 \xff")))
    assert main(["generate", "-", "--model", str(tiny_model_dir), "--max-new-bytes", "2", "--show-patches"]) == 0
    assert "8 bytes in" in capsys.readouterr().err  # 6 prompt bytes, as given, and 2 new ones
    assert main(["generate", os.fsdecode(b"caf\xe9"), "--model", str(tiny_model_dir), "--max-new-bytes", "2"]) == 0


def test_broken_pipe_exits_quietly(monkeypatch, capsys):
    """`bolmo info --json | head -1`: the reader is gone; exit 141 without a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as closed_pipe:
        monkeypatch.setattr(sys, "stdout", closed_pipe)
        assert main(["info", "--json"]) == 141
    assert capsys.readouterr().err == ""


def test_an_interruption_wrapped_by_torch_checkpointing_is_still_an_interruption():
    """torch.distributed.checkpoint reports a signal that lands inside a save as a
    CheckpointException (a BaseException) holding each rank's exception: the CLI must see the
    interruption inside it, not let it escape as a traceback."""
    import traceback

    from torch.distributed.checkpoint.api import CheckpointException

    from bolmo.cli import Terminated, _interruption

    inner = Terminated(15)
    wrapped = CheckpointException("save failed", {0: (inner, traceback.StackSummary())})
    assert _interruption(wrapped) is inner
    assert _interruption(CheckpointException("other", {0: (ValueError("x"), traceback.StackSummary())})) is None


def test_a_model_type_that_is_not_a_string_is_a_config_error(tmp_path):
    """Found by the property test: a list as model_type used to escape as a TypeError."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": ["bolmo"]}))
    with pytest.raises(bolmo.ConfigError, match="model_type: expected a string"):
        bolmo.load(tmp_path)

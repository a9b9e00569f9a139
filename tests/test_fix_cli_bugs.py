"""User-reported CLI bugs: Ctrl-C during start-up, closed pipes, `--stop`, ignored sampling options,
`score -`, `eval cute --data`, `eval bpb` source names, `info --model`, and the docs that disagreed."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bolmo.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ Ctrl-C
def _wait_for_torch(pid: int, timeout: float = 60.0) -> None:
    """Until the process has begun importing torch (its libraries are mapped): the start of the
    seconds in which Ctrl-C used to escape as a traceback."""
    maps = Path(f"/proc/{pid}/maps")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "libtorch" in maps.read_text():
            return
        time.sleep(0.005)
    raise AssertionError("torch was never imported")


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux's /proc to see torch load")
@pytest.mark.parametrize("delay", [0.0, 0.25, 0.5, 1.0, 2.0, 5.0])
def test_ctrl_c_at_any_moment_is_a_one_line_interruption(delay):
    """Ctrl-C while torch imports (its first seconds), while the model loads or while it generates:
    always `bolmo generate: interrupted` and 130, never a traceback or death by signal."""
    # SIG_DFL in the child: a test run started in the background (`make test &`) has SIGINT ignored,
    # which the child would inherit, and Python installs its Ctrl-C handler only where it is not.
    process = subprocess.Popen([sys.executable, "-m", "bolmo.cli", "generate", "Hi", "--max-new-bytes", "100000"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for_torch(process.pid)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    stderr = err.decode()
    assert "Traceback" not in stderr, stderr
    assert process.returncode == 130, stderr
    assert stderr.strip().endswith("bolmo generate: interrupted"), stderr


def _run_module(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    """`code` run as `python -m` runs bolmo.cli (torchrun's form), with `args` as its arguments."""
    (tmp_path / "entry.py").write_text(textwrap.dedent(code))
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "entry", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": path}, timeout=300)


def test_ctrl_c_inside_exec_still_exits_130(tmp_path):
    """A Ctrl-C that escapes exec()'d code (dataclasses' `__init__`, built while torch imports) made
    CPython end the process by SIGINT after the message, whatever main() returned."""
    done = _run_module(tmp_path, """
        import sys
        import bolmo.cli.model_commands as commands
        commands.run_info = lambda args: exec("raise KeyboardInterrupt")
        from bolmo.cli import main
        sys.exit(main(["info"]))
    """)
    assert (done.returncode, done.stderr) == (130, "bolmo info: interrupted\n")


def test_ctrl_c_while_torch_imports_numpy_is_not_lost(tiny_model_dir, tmp_path):
    """torch imports numpy from C++ and turns a Ctrl-C meanwhile into a warning: the command went on."""
    done = _run_module(tmp_path, """
        import sys

        class CtrlC:  # one Ctrl-C, landing as numpy starts to import
            def find_spec(self, name, path=None, target=None):
                if name == "numpy":
                    sys.meta_path.remove(self)
                    raise KeyboardInterrupt

        sys.meta_path.insert(0, CtrlC())
        from bolmo.cli import main
        sys.exit(main(sys.argv[1:]))
    """, "info", str(tiny_model_dir), "--json")
    assert (done.returncode, done.stderr) == (130, "bolmo info: interrupted\n")


def test_the_command_line_starts_without_torch():
    """torch loads inside the command, where an interruption is handled, not before main() runs."""
    code = "import sys, bolmo.cli; bolmo.cli.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


# ------------------------------------------------------------------------------------ closed pipe
@pytest.mark.parametrize("command", [["eval", "tasks"], ["info"], ["eval", "tasks", "--json"]])
def test_a_closed_pipe_exits_141_quietly_for_tables_too(command, tiny_model_dir, monkeypatch, capsys):
    """`bolmo eval tasks | head -1`: a rich table met the closed pipe and exited 1; now 141 like print()."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    args = [*command, str(tiny_model_dir)] if command == ["info"] else command
    with open(write_end, "w") as closed_pipe:
        monkeypatch.setattr(sys, "stdout", closed_pipe)
        assert main(args) == 141
    assert capsys.readouterr().err == ""


def test_rich_keeps_its_own_broken_pipe_behaviour_outside_a_command():
    from rich.console import Console

    default = Console.on_broken_pipe
    main(["eval", "tasks", "--json"])
    assert Console.on_broken_pipe is default


# ------------------------------------------------------------------------------------ generate
def test_stop_takes_one_value_per_flag_and_leaves_the_prompt_alone():
    args = build_parser().parse_args(["generate", "--stop", "x", "Hi"])
    assert (args.prompt, args.stop) == ("Hi", ["x"])
    args = build_parser().parse_args(["generate", "Hi", "--stop", "a", "--stop", "b"])
    assert (args.prompt, args.stop) == ("Hi", ["a", "b"])


def test_stop_before_the_prompt_generates(tiny_model_dir, capsys):
    assert main(["generate", "--stop", "zz", "Hi", "--model", str(tiny_model_dir), "--max-new-bytes", "3"]) == 0


@pytest.mark.parametrize("flags, note", [
    (["--top-k", "5"], "bolmo generate: note: --top-k has no effect with --temperature 0 (greedy)"),
    (["--top-p", "0.9", "--seed", "3"], "bolmo generate: note: --top-p, --seed have no effect with --temperature 0"),
    (["--seed", "3", "--temperature", "0.7"], None),
    ([], None),
])
def test_sampling_options_with_greedy_decoding_get_a_note(flags, note, tiny_model_dir, capsys):
    assert main(["generate", "Hi", "--model", str(tiny_model_dir), "--max-new-bytes", "2", *flags]) == 0
    err = capsys.readouterr().err
    assert (note in err) if note else ("note:" not in err), err


# ------------------------------------------------------------------------------------ score -
def test_score_dash_reads_stdin_like_a_file(tiny_model_dir, tmp_path, monkeypatch, capsys):
    text = "Hello world.\r\nSecond line, with caf\u00e9.\n"
    file = tmp_path / "t.txt"
    file.write_bytes(text.encode())
    assert main(["score", str(file), "--model", str(tiny_model_dir), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    assert main(["score", "-", "--model", str(tiny_model_dir), "--json"]) == 0
    from_stdin = json.loads(capsys.readouterr().out)
    assert from_stdin["files"][0]["file"] == "-"
    assert from_stdin["bits_per_byte"] == from_file["bits_per_byte"]


@pytest.mark.parametrize("stdin", [None, io.TextIOWrapper(io.BytesIO(b"ok \xff"))])
def test_score_dash_without_usable_stdin_is_a_one_line_error(stdin, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["score", "-", "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bolmo score: error: -: ") and err.count("\n") == 1, err


# ------------------------------------------------------------------------------------ eval
@pytest.mark.parametrize("exists, message", [(False, "no such directory"), (True, "not a directory")])
def test_eval_cute_names_a_missing_data_directory(exists, message, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "cute"
    if exists:
        data.write_text("a file, not a directory")
    assert main(["eval", "cute", "--data", str(data), "--model", str(tiny_model_dir)]) == 2
    assert f"bolmo eval: error: {data}: {message}" in capsys.readouterr().err


def test_eval_bpb_names_a_single_file_by_its_stem(tiny_model_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "notes.txt").write_text("Hello world, a short document.")
    monkeypatch.chdir(tmp_path / "w")
    out = tmp_path / "bpb.json"
    assert main(["eval", "bpb", "notes.txt", "--model", str(tiny_model_dir), "--no-progress",
                 "--output", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"].values()
    assert list(result["sources"]) == ["notes"]


# ------------------------------------------------------------------------------------ info --model
def test_info_takes_model_as_an_option_too(tiny_model_dir, capsys):
    assert main(["info", str(tiny_model_dir), "--json"]) == 0
    positional = json.loads(capsys.readouterr().out)
    assert main(["info", "--model", str(tiny_model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == positional
    assert main(["info", str(tiny_model_dir), "--model", str(tiny_model_dir)]) == 2
    assert "name the model once" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ docs
def test_compile_help_agrees_with_the_readme(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "about three times as fast at batch 1 on a CPU" in " ".join(capsys.readouterr().out.split())
    assert "about three times as fast at\nbatch 1 on a CPU" in (ROOT / "README.md").read_text()


def test_readme_lists_each_benchmark_once():
    scripts = re.findall(r"^\.venv/bin/python (benchmarks/\S+)", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert scripts and len(scripts) == len(set(scripts)), scripts


def test_training_doc_says_the_toy_recipes_resume():
    resuming = sorted(p.name for p in (ROOT / "recipes" / "toy").glob("*.yaml")
                      if re.search(r"^resume:\s*true", p.read_text(), re.MULTILINE))
    text = " ".join((ROOT / "docs" / "training.md").read_text().split())
    assert not resuming or "The toy recipes (`recipes/toy/*.yaml`) set `resume: true`" in text


def test_generate_shows_control_characters_as_escapes_on_a_terminal_only(monkeypatch, capsys):
    """A random or barely trained model can emit ESC sequences, bells, carriage returns: on a
    terminal they are written as visible escapes; a pipe gets the bytes as generated."""
    import bolmo.cli.generate_commands as generate_commands

    class Model:
        def stream(self, prompt, **options):
            yield from ("ok\x1b[2J", "\x07\r\x85\n\tdone é")

    monkeypatch.setattr(generate_commands, "load_from_args", lambda args: Model())
    assert main(["generate", "x"]) == 0
    assert capsys.readouterr().out == "ok\x1b[2J\x07\r\x85\n\tdone é\n"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["generate", "x"]) == 0
    assert capsys.readouterr().out == "ok\\x1b[2J\\x07\\x0d\\x85\n\tdone é\n"


def test_train_overrides_may_follow_a_flag(capsys):
    from bolmo.cli import _parse

    args = _parse(build_parser(), ["train", "run.yaml", "--resume", "optim.lr=1e-2", "schedule.steps=10"])
    assert args.resume and args.overrides == ["optim.lr=1e-2", "schedule.steps=10"]
    args = _parse(build_parser(), ["train", "run.yaml", "a=1", "--resume", "b=2"])
    assert args.overrides == ["a=1", "b=2"]
    for argv in (["train", "run.yaml", "--resume", "--bogus"], ["serve", "stray=1"]):  # serve takes no overrides
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"unrecognized arguments: {argv[-1]}" in err and f"bolmo {argv[0]}: error" in err  # its own usage


def test_piped_tables_keep_every_name_whole(capsys):
    """Piped, rich wrapped tables at 80 columns and split long tensor names over two lines."""
    assert main(["inspect", "default", "--json"]) == 0
    names = [t["name"] for t in json.loads(capsys.readouterr().out)["tensors"]]
    assert main(["inspect", "default"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in names)
    assert main(["info"]) == 0
    assert "max_position_embeddings" in capsys.readouterr().out  # the context a user needs to know


def test_piped_eval_tables_keep_long_task_names(capsys):
    from bolmo.eval.report import print_table

    name = "mmlu_high_school_government_and_politics_rc_5shot acc_per_char"
    print_table("OLMo tasks", [name], {"bundled default model": {name: 0.25}, "default-teacher": {name: 0.5}},
                first_column="task metric")
    out = capsys.readouterr().out
    assert name in out and "0.2500" in out and "0.5000" in out

"""Where `bolmo eval` writes: never over a device, a pipe or an input file, through symlinks, and
the CUTE chart beside its results."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from bolmo.cli import main
from bolmo.cli.eval_commands import _chart_path
from bolmo.errors import BolmoError
from bolmo.eval.report import check_not_an_input, write_json


def test_a_pipe_is_refused_not_replaced(tmp_path, capsys):
    """Before: the results replaced a FIFO (or /dev/null as root) with a regular file, exit 0."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    doc = tmp_path / "doc.txt"
    doc.write_text("hello world")
    with pytest.raises(SystemExit) as exit_info:  # --output is checked while the arguments are parsed
        main(["eval", "bpb", str(doc), "--output", str(fifo), "--no-progress"])
    assert exit_info.value.code == 2
    assert "is not a regular file" in capsys.readouterr().err
    assert fifo.is_fifo()
    with pytest.raises(BolmoError, match="is not a regular file"):
        write_json(fifo, {"a": 1})
    assert fifo.is_fifo()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_file_system_that_refuses_new_files_is_refused_before_the_run(tmp_path, capsys):
    """Before: /proc passed the permission check, the whole evaluation ran, then writing failed."""
    doc = tmp_path / "doc.txt"
    doc.write_text("hello world")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "bpb", str(doc), "--output", "/proc/bolmo-results.json", "--no-progress"])
    assert exit_info.value.code == 2
    assert "cannot write the results in /proc" in capsys.readouterr().err


def test_a_symlink_is_written_through(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_json(link, {"a": 1})
    assert link.is_symlink() and json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]  # no temporary left


def test_bpb_refuses_to_write_over_its_inputs(tmp_path, capsys):
    """Before: `bolmo eval bpb src.txt --output src.txt` replaced the corpus with the results."""
    doc = tmp_path / "src.txt"
    doc.write_text("some text to score")
    assert main(["eval", "bpb", str(doc), "--output", str(doc), "--no-progress"]) == 2
    assert "names an input of this evaluation" in capsys.readouterr().err
    assert doc.read_text() == "some text to score"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("text")
    with pytest.raises(BolmoError, match="inside the input directory"):
        check_not_an_input(corpus / "results.json", [corpus], "--output")
    check_not_an_input(tmp_path / "results.json", [corpus, doc], "--output")  # beside them: fine


def test_the_cute_chart_goes_beside_its_results(tmp_path):
    """Before: the chart was always ./bolmo-eval-cute.png, whatever --output said."""
    args = argparse.Namespace(chart=None, output=tmp_path / "runs" / "cute.json")
    assert _chart_path(args) == tmp_path / "runs" / "cute.png"
    assert _chart_path(argparse.Namespace(chart=tmp_path / "c.png", output=None)) == tmp_path / "c.png"
    with pytest.raises(BolmoError, match="name the same file"):
        _chart_path(argparse.Namespace(chart=tmp_path / "x.png", output=tmp_path / "x.png"))
    (tmp_path / "d.png").mkdir()
    with pytest.raises(BolmoError, match="is a directory"):  # checked before the evaluation runs
        _chart_path(argparse.Namespace(chart=None, output=tmp_path / "d.json"))


def test_a_model_given_twice_is_evaluated_once_and_said(tiny_model_dir, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("some text to score")
    out = tmp_path / "bpb.json"
    assert main(["eval", "bpb", str(doc), "--model", str(tiny_model_dir), "--model", str(tiny_model_dir),
                 "--no-progress", "--output", str(out)]) == 0
    assert f"--model {tiny_model_dir} given more than once: evaluated once" in capsys.readouterr().err
    assert list(json.loads(out.read_text())["results"]) == [str(tiny_model_dir)]

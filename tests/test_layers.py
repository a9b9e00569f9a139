"""The package's layers point one way and no module imports back into its own import chain
(the contracts in pyproject.toml's [tool.importlinter], checked with import-linter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    # In a subprocess: import-linter configures logging with disable_existing_loggers, which
    # would silence the "bolmo" logger for the tests that run after this one in the same process.
    check = ("import sys; from importlinter.cli import lint_imports; "
             f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}))")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr  # names any broken import


def test_the_model_layer_imports_no_loading_scoring_or_generation():
    import grimp

    graph = grimp.build_graph("bolmo")
    model_modules = graph.find_descendants("bolmo.model") | {"bolmo.model"}
    imported = {m for module in model_modules for m in graph.find_modules_directly_imported_by(module)}
    assert sorted(m for m in imported if m.split(".")[1] not in ("model", "nn", "config", "errors", "olmo")) == []


@pytest.mark.parametrize("upper", ["bolmo.generation", "bolmo.scoring", "bolmo.loading", "bolmo.checkpoint"])
def test_an_upward_import_would_be_caught(upper):
    """The layer check is not vacuous: the same graph with a model module importing upward fails it."""
    import grimp

    graph = grimp.build_graph("bolmo")
    layers = [upper, "bolmo.model"]
    assert not graph.find_illegal_dependencies_for_layers(layers=layers, containers=set())
    graph.add_import(importer="bolmo.model.bolmo", imported=upper)
    assert graph.find_illegal_dependencies_for_layers(layers=layers, containers=set())

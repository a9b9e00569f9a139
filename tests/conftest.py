"""Shared test helpers: the in-repository fixtures (tests/fixtures, see its README) and the Bolmo
fixture models in them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BOLMO_FIXTURES = FIXTURES / "bolmo"
CKPT_FIXTURES = FIXTURES / "ckpt"

BOLMO_MODEL_DIRS = sorted(p for p in BOLMO_FIXTURES.iterdir() if (p / "cases.json").is_file())


@pytest.fixture(scope="session", params=BOLMO_MODEL_DIRS, ids=[p.name for p in BOLMO_MODEL_DIRS])
def fixture_model_dir(request) -> Path:
    return request.param


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return BOLMO_FIXTURES / "tiny-gqa"


_MODEL_CACHE: dict[Path, object] = {}


def load_fixture_model(path: Path):
    """Load each fixture model once per session (tests must not mutate it)."""
    import bolmo

    if path not in _MODEL_CACHE:
        _MODEL_CACHE[path] = bolmo.load(path)
    return _MODEL_CACHE[path]


def read_cases(path: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    return json.loads((path / "cases.json").read_text()), load_file(path / "cases.safetensors")

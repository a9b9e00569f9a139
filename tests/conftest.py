"""Shared test helpers: where ../shared/fixtures is, and the Bolmo fixture models in it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures"
BOLMO_FIXTURES = FIXTURES / "bolmo"
CKPT_FIXTURES = FIXTURES / "ckpt"

if not FIXTURES.is_dir():  # CI has ../shared beside the clone; without it the suite is meaningless
    raise RuntimeError(f"test fixtures not found at {FIXTURES} (../shared must sit beside the repository)")

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

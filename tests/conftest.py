"""Shared test helpers: the in-repository fixtures (tests/fixtures, see its README) and the Bolmo
fixture models in them."""

from __future__ import annotations

import json
import math
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


def bits_per_byte_by_hand(model, text: str) -> float:
    """What `model.score([text])[0].bits_per_byte` must be: one unbatched forward pass, the folded
    log-probability of each next byte (`folded_logprobs`, pinned to the reference's records by
    test_model_fixtures), summed, in bits per UTF-8 byte."""
    import torch

    from bolmo.scoring import folded_logprobs

    ids = torch.tensor([model.tokenizer.encode(text)])
    with torch.no_grad():
        nats = -folded_logprobs(model(ids).logits[:, :-1], ids[:, 1:]).double().sum().item()
    return nats / math.log(2) / len(text.encode("utf-8"))

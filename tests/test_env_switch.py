"""bolmo.config.env_switch: BOLMO_COMPILE, BOLMO_ONEDNN and BOLMO_KEEP_FREED_MEMORY read one way."""

from __future__ import annotations

import pytest

from bolmo.config import env_switch
from bolmo.errors import BolmoWarning
from bolmo.generation.compiled import compile_by_default


@pytest.mark.parametrize("value, expected", [("1", True), ("On", True), ("YES", True), ("true", True),
                                             ("0", False), ("False", False), ("off", False)])
def test_words_in_any_case(monkeypatch, value, expected):
    monkeypatch.setenv("BOLMO_TEST_SWITCH", value)
    assert env_switch("BOLMO_TEST_SWITCH", not expected) is expected


def test_unset_or_empty_gives_the_default_and_nonsense_warns(monkeypatch):
    monkeypatch.delenv("BOLMO_TEST_SWITCH", raising=False)
    assert env_switch("BOLMO_TEST_SWITCH", True) is True
    monkeypatch.setenv("BOLMO_TEST_SWITCH", " ")  # set but empty: as unset
    assert env_switch("BOLMO_TEST_SWITCH", True) is True and env_switch("BOLMO_TEST_SWITCH", False) is False
    monkeypatch.setenv("BOLMO_TEST_SWITCH", "maybe")
    with pytest.warns(BolmoWarning, match="BOLMO_TEST_SWITCH='maybe'"):
        assert env_switch("BOLMO_TEST_SWITCH", True) is True


def test_compile_switch_reads_false_in_any_case(monkeypatch):
    monkeypatch.setenv("BOLMO_COMPILE", "False")  # once turned compilation on
    assert compile_by_default() is False
    monkeypatch.setenv("BOLMO_COMPILE", "on")
    assert compile_by_default() is True

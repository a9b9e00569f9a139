"""Scoring never runs a model past its positions, and never reports a number it cannot stand by
(issue 12: long inputs, NaN, bad arguments)."""

from __future__ import annotations

import math

import pytest
import torch

import bolmo
from bolmo.errors import BolmoError, ScoringError
from bolmo.scoring import folded_logprobs, windows


@pytest.mark.parametrize("n,max_ids,context", [(0, 4, 2), (1, 4, 0), (10, 4, 1), (100, 16, 8), (33, 16, 15), (16, 16, 3)])
def test_windows_score_every_id_once_within_the_limit(n, max_ids, context):
    cut = windows(n, max_ids, context)
    scored = [i for w in cut for i in range(w.scored_from, w.end)]
    assert scored == list(range(n))
    for w in cut:
        assert 0 <= w.start <= w.scored_from <= w.end and w.end - w.start <= max_ids
        assert w.scored_from - w.start == (min(context, w.scored_from) if w.scored_from else 0)


def test_windows_refuse_impossible_context():
    with pytest.raises(ScoringError, match="context"):
        windows(10, 4, 4)


@pytest.fixture()
def short_model(tiny_model_dir):
    """A private copy of the tiny model whose config claims only 16 positions."""
    model = bolmo.load(tiny_model_dir)
    model.config.max_position_embeddings = 16
    return model


def test_long_text_is_scored_in_windows_that_fit(short_model):
    model = short_model
    seen: list[int] = []
    forward = model.forward

    def watched(ids, *args, **kwargs):
        seen.append(ids.shape[1])
        return forward(ids, *args, **kwargs)

    model.forward = watched
    text = "The quick brown fox jumps over the lazy dog. " * 3
    result = model.score([text], batch_size=2, context=5)[0]
    assert max(seen) <= 16 and result.n_bytes == len(text.encode())
    # Each window is exactly a short text scored alone: BOS + its bytes, the context bytes dropped.
    data = text.encode()
    expected = []
    for w in windows(len(data), 15, 5):
        ids = torch.tensor([[model.tokenizer.bos_id] + model.tokenizer.encode(text, add_bos=False)[w.start : w.end]])
        with torch.no_grad():
            lp = folded_logprobs(forward(ids).logits[:, :-1], ids[:, 1:])[0]
        expected.append(lp[w.scored_from - w.start :])
    torch.testing.assert_close(result.byte_logprobs, torch.cat(expected), atol=1e-5, rtol=0)


def test_single_string_is_refused_not_split_into_characters(tiny_model_dir):
    from conftest import load_fixture_model

    model = load_fixture_model(tiny_model_dir)
    with pytest.raises(ScoringError, match="list"):
        model.score("hello")


@pytest.mark.parametrize("texts,kwargs", [([b"x"], {}), ([None], {}), (["\ud800"], {}), (["x"], {"batch_size": 0}),
                                          (["x"], {"batch_size": 1.5}), (["x"], {"context": -1}), (5, {})])
def test_bad_score_arguments_raise_bolmo_errors(tiny_model_dir, texts, kwargs):
    from conftest import load_fixture_model

    with pytest.raises(BolmoError):
        load_fixture_model(tiny_model_dir).score(texts, **kwargs)


def test_nan_model_is_not_scored(short_model):
    with torch.no_grad():
        short_model.lm_head.weight[0, 0] = math.nan
    with pytest.raises(ScoringError, match="non-finite"):
        short_model.score(["abc"])

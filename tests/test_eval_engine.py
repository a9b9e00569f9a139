"""Loglikelihoods of the eval engine: olmes' hf_bolmo protocol computed by hand on a tiny model,
whitespace handling, batch independence, and the subword path."""

from __future__ import annotations

import pytest
import torch

from bolmo.eval.engine import IdRequest, Scorer, move_trailing_whitespace
from bolmo.eval.rolling import score_documents, windows
from conftest import load_fixture_model
from eval_helpers import hand_loglikelihood, tiny_olmo_dir

REQUESTS = [
    ("The capital of France is", " Paris"),
    ("Question: 2 + 2 =", " 4"),
    ("Größe: ", "大小 groß"),
    ("", "an empty context"),
    ("x", ""),
    ("A much longer context that makes this row the widest one in the batch by a margin:", " yes"),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_fixture_model(tiny_model_dir)


def test_whitespace_moves_into_the_continuation():
    assert move_trailing_whitespace("Answer: ", "Paris") == ("Answer:", " Paris")
    assert move_trailing_whitespace("a\n\n", "b") == ("a", "\n\nb")
    assert move_trailing_whitespace("a", " b") == ("a", " b")


@pytest.mark.parametrize("model_name", ["tiny", "default"])
def test_matches_hand_computation_at_every_batch_size(model_name, tiny):
    import bolmo

    model = tiny if model_name == "tiny" else bolmo.load()
    expected = [hand_loglikelihood(model, *move_trailing_whitespace(c, x)) for c, x in REQUESTS]
    for batch_size in (1, 4, 16):
        got = Scorer(model, batch_size=batch_size).loglikelihood(REQUESTS)
        for (logprob, greedy), result in zip(expected, got):
            assert result.logprob == pytest.approx(logprob, abs=2e-4)
            assert result.is_greedy == greedy
    # exactly the batch-size-1 values, whatever the neighbours
    single = Scorer(model, batch_size=1).loglikelihood(REQUESTS)
    batched = Scorer(model, batch_size=len(REQUESTS)).loglikelihood(REQUESTS[::-1])[::-1]
    assert [r.logprob for r in single] == pytest.approx([r.logprob for r in batched], abs=1e-5)


def test_is_greedy_agrees_with_the_folded_argmax_for_every_candidate_byte():
    """One-byte continuations: is_greedy must be True exactly for the byte that is the folded
    argmax (seen with that byte as the boundary predictor's lookahead), and False otherwise."""
    import bolmo

    model = bolmo.load()
    context = "The Python standard"
    candidates = [chr(c) for c in range(32, 127)]
    results = Scorer(model, batch_size=32).loglikelihood([(context, c) for c in candidates])
    expected = [hand_loglikelihood(model, context, c)[1] for c in candidates]
    assert [r.is_greedy for r in results] == expected
    assert any(expected)  # the case that can be True is covered


def test_max_length_drops_context_from_the_left(tiny):
    scorer = Scorer(tiny, max_length=8)
    ids, first, continuation = scorer.row(IdRequest(tuple(range(10, 20)), (30, 31)))
    assert len(ids) == 8 and ids[0] == 1 and continuation == [30, 31]
    assert ids[first: first + 2] == [30, 31]  # the lookahead "\n" follows them
    long = Scorer(tiny, max_length=2)
    with pytest.raises(Exception, match="max_length"):
        long.row(IdRequest((5,), (30, 31, 32)))


def test_windows_cover_every_id_once():
    for n in (0, 1, 7, 8, 9, 30):
        spans = windows(n, window=8, overlap=3)
        covered = [i for _, start, end in spans for i in range(start, end)]
        assert covered == list(range(n))
        for ctx_start, start, end in spans:
            assert end - ctx_start <= 8 and (start == 0 or start - ctx_start == 3)


def test_documents_score_like_model_score(tiny):
    texts = ["The quick brown fox jumps over the lazy dog.", "Größe 大小", "a"]
    scorer = Scorer(tiny, batch_size=2)
    docs = score_documents(scorer, texts, window=4096, overlap=1024)
    reference = tiny.score(texts)
    for doc, ref in zip(docs, reference):
        assert doc.n_bytes == ref.n_bytes
        assert -doc.logprob == pytest.approx(ref.nats, abs=2e-4)
    windowed = score_documents(scorer, texts, window=16, overlap=4)
    assert windowed[2].logprob == pytest.approx(docs[2].logprob, abs=1e-6)  # one window: identical
    assert windowed[0].logprob != pytest.approx(docs[0].logprob, abs=1e-6)  # less context: differs


def test_subword_loglikelihood_matches_a_direct_computation(tmp_path_factory):
    import bolmo

    model = bolmo.load(tiny_olmo_dir(tmp_path_factory.mktemp("olmo")))
    tok = model.tokenizer
    context, continuation = "def main(", "):\n    return 0"
    whole = tok.encode(context + continuation, add_bos=False)
    n_ctx = len(tok.encode(context, add_bos=False))
    ids = [tok.bos_id] + whole
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    expected = sum(float(logprobs[t - 1, ids[t]]) for t in range(1 + n_ctx, len(ids)))
    results = Scorer(model, batch_size=3).loglikelihood([(context, continuation), ("x", " y"), ("", "z")])
    assert results[0].logprob == pytest.approx(expected, abs=2e-4)
    single = Scorer(model, batch_size=1).loglikelihood([("x", " y"), ("", "z")])
    assert [r.logprob for r in single] == pytest.approx([r.logprob for r in results[1:]], abs=1e-5)


def test_cut_contexts_are_reported_once_per_call(tiny):
    """Before: few-shot contexts longer than the model's context were cut without a word (a
    "5-shot" task silently scored with fewer shots)."""
    import warnings

    from bolmo.errors import ContextWarning

    positions = tiny.config.context_positions
    requests = [IdRequest(tuple(4 + i % 256 for i in range(positions)), (30,)), IdRequest((5, 6), (30,)),
                IdRequest(tuple([7] * (2 * positions)), (31, 32))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Scorer(tiny).score(requests)
        Scorer(tiny).score(requests[1:2])  # fits: no warning
    messages = [str(w.message) for w in caught if issubclass(w.category, ContextWarning)]
    assert messages == [f"2 of 3 requests are longer than the model's context ({positions:,} positions): their "
                        "contexts were cut from the left, as lm-eval's hf model does (few-shot examples are lost "
                        "first)"]


def test_max_length_defaults_to_the_models_context(tiny):
    from bolmo.errors import ContextWarning

    positions = tiny.config.context_positions
    scorer = Scorer(tiny)
    assert scorer.max_length == positions + 1  # start, context, continuation + the one lookahead id fed
    ids, _, _ = scorer.row(IdRequest(tuple(range(10, 10 + positions)), (30, 31)))
    assert len(ids) == positions + 1  # context cut from the left to fit
    too_long = IdRequest((5, 6), tuple([40] * (positions + 3)))
    # The model's positions, as every other context warning says (not max_length, which counts the lookahead id)
    with pytest.warns(ContextWarning, match=rf"longer than the model's context \({positions:,} positions\)"):
        ids, first, _ = scorer.row(too_long)  # scored whole, after the start id alone
    assert ids[0] == 1 and first == 1
    with pytest.raises(Exception, match="max_length"):
        Scorer(tiny, max_length=positions).row(too_long)  # asked for explicitly: refused

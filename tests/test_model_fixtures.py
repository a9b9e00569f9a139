"""The model reproduces the reference implementation's recorded outputs for every fixture model.

Tolerances: boundary masks exactly; logits and folded next-byte log-probabilities within 1e-4
absolute (float32; measured differences are ~1e-5 or exactly 0); totals within 1e-3 nats.
"""

from __future__ import annotations

import math

import pytest
import torch

import bolmo
from conftest import load_fixture_model, read_cases
from bolmo.nn import onednn
from bolmo.nn.onednn import onednn_linear
from bolmo.scoring import folded_logprobs

ATOL = 1e-4


def forward_case_indices(path):
    meta, tensors = read_cases(path)
    return [c["index"] for c in meta["forward"] if "error" not in c]


@pytest.mark.parametrize("products", ["onednn-long-inputs", "mkl"])
def test_forward_cases_match_reference(fixture_model_dir, products, monkeypatch):
    """Both float32 product backends of bolmo.nn.onednn: long inputs (a 321-byte case) go through
    oneDNN by default and must still match the reference."""
    monkeypatch.setattr(onednn, "ONEDNN", onednn.ONEDNN and products != "mkl")
    calls = []
    monkeypatch.setattr(onednn, "onednn_linear", lambda *args: calls.append(1) or onednn_linear(*args))
    model = load_fixture_model(fixture_model_dir)
    meta, cases = read_cases(fixture_model_dir)
    checked = 0
    for case in meta["forward"]:
        if "error" in case:
            continue
        i = case["index"]
        ids = cases[f"fwd/{i}/input_ids"]
        assert ids[0].tolist() == model.tokenizer.encode(case["text"])
        if f"fwd/{i}/expanded_input_ids" in cases:
            assert torch.equal(model.expand(ids), cases[f"fwd/{i}/expanded_input_ids"])
        with torch.no_grad():
            out = model(ids)
        assert torch.equal(out.boundary_mask, cases[f"fwd/{i}/boundary_mask"].bool()), f"case {i}"
        torch.testing.assert_close(out.boundary_logprobs, cases[f"fwd/{i}/boundary_logprobs"], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.logits, cases[f"fwd/{i}/logits"], atol=ATOL, rtol=0)
        torch.testing.assert_close(folded_logprobs(out.logits[:, :-1], ids[:, 1:]),
                                   cases[f"fwd/{i}/next_byte_logprobs"], atol=ATOL, rtol=0)
        checked += 1
    assert checked >= 1
    assert bool(calls) == onednn.ONEDNN, "the long case's products did not take the backend under test"


def test_score_matches_recorded_totals(fixture_model_dir):
    model = load_fixture_model(fixture_model_dir)
    meta, _ = read_cases(fixture_model_dir)
    cases = [c for c in meta["forward"] if "error" not in c]
    results = model.score([c["text"] for c in cases], batch_size=3)
    for case, result in zip(cases, results):
        assert result.n_bytes == case["n_bytes"] == len(case["text"].encode("utf-8"))
        assert result.byte_logprobs.shape == (case["n_bytes"],)
        assert math.isclose(result.nats, case["total_nats"], abs_tol=1e-3)
        assert math.isclose(result.bits_per_byte, case["bits_per_byte"], abs_tol=1e-5)


def test_unpadded_batch_matches_reference(fixture_model_dir):
    """Without an attention mask the reference's batched computation is reproduced exactly."""
    model = load_fixture_model(fixture_model_dir)
    _, cases = read_cases(fixture_model_dir)
    ids = cases["batch/input_ids"]
    with torch.no_grad():
        out = model(ids)
    assert torch.equal(out.boundary_mask, cases["batch/boundary_mask"].bool())
    torch.testing.assert_close(out.logits, cases["batch/logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(folded_logprobs(out.logits[:, :-1], ids[:, 1:]),
                               cases["batch/next_byte_logprobs"], atol=ATOL, rtol=0)


def test_masked_batch_rows_equal_single_rows(fixture_model_dir):
    """With an attention mask every row is independent, even with different patch counts."""
    model = load_fixture_model(fixture_model_dir)
    _, cases = read_cases(fixture_model_dir)
    ids = cases["batch/input_ids"]
    with torch.no_grad():
        batched = model(ids, attention_mask=torch.ones_like(ids, dtype=torch.bool))
        for row in range(ids.shape[0]):
            single = model(ids[row : row + 1])
            torch.testing.assert_close(batched.logits[row : row + 1], single.logits, atol=ATOL, rtol=0)
            assert torch.equal(batched.boundary_mask[row : row + 1], single.boundary_mask)


def test_right_padded_scoring_equals_scoring_alone(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    texts = ["a", "Größe 大小 😀 naïve café", "def fib(n):\n    return n\n" * 3, ""]
    together = model.score(texts, batch_size=4)
    for text, result in zip(texts, together):
        alone = model.score([text])[0]
        assert result.n_bytes == alone.n_bytes
        torch.testing.assert_close(result.byte_logprobs, alone.byte_logprobs, atol=1e-5, rtol=0)


def test_bos_only_input_runs_and_scores(tiny_model_dir):
    """The reference crashes on an empty text; here BOS alone is one patch and scores 0 bytes."""
    model = load_fixture_model(tiny_model_dir)
    ids = torch.tensor([model.tokenizer.encode("")])
    with torch.no_grad():
        out = model(ids)
    assert out.logits.shape == (1, 1, 520)
    # Causal: BOS's logits are position 0 of every recorded prompt's logits.
    _, cases = read_cases(tiny_model_dir)
    for i in forward_case_indices(tiny_model_dir):
        torch.testing.assert_close(out.logits[0, 0], cases[f"fwd/{i}/logits"][0, 0], atol=ATOL, rtol=0)
    assert out.boundary_mask.tolist() == [[True]]
    with pytest.warns(bolmo.BolmoWarning, match=r"texts\[0\] is empty: 0 bytes, bits per byte NaN"):
        result = model.score([""])[0]
    assert result.n_bytes == 0 and result.nats == 0.0 and math.isnan(result.bits_per_byte)
    assert math.copysign(1.0, result.nats) == 1.0 and result.as_dict()["nats"] == 0.0  # 0, not -0.0
    assert str(result.as_dict()["nats"]) == "0.0"


def test_multibyte_utf8_roundtrip(tiny_model_dir):
    tok = load_fixture_model(tiny_model_dir).tokenizer
    text = "Größe 大小 😀 naïve café"
    ids = tok.encode(text)
    assert ids[0] == 1 and len(ids) == 1 + len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    fused = [i + 260 if i >= 4 else i for i in ids]  # boundary flags do not change the text
    assert tok.decode(fused) == text
    assert tok.decode([1, 4 + 0xE5, 4 + 0xA4]) == "\ufffd"  # truncated multi-byte: replacement char


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_low_precision_forward_is_close(tiny_model_dir, dtype):
    import bolmo

    model = bolmo.load(tiny_model_dir, dtype=dtype)
    _, cases = read_cases(tiny_model_dir)
    ids = cases["fwd/1/input_ids"]
    with torch.no_grad():
        out = model(ids, boundary_mask=cases["fwd/1/boundary_mask"].bool())
    assert out.logits.dtype == dtype
    ref = cases["fwd/1/logits"]
    # bfloat16 keeps ~3 significant digits; logits are O(10).
    assert (out.logits.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_max_patches_caps_the_pooling_not_the_decision(tiny_model_dir):
    """Stage 2 pools at most P patches: boundaries after the P-th are dropped from the patching,
    bytes after it reuse the last patch, and the returned mask keeps every predicted boundary."""
    model = load_fixture_model(tiny_model_dir)
    ids = torch.tensor([model.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 2)])
    with torch.no_grad():
        free = model(ids)
        cap = int(free.boundary_mask.sum()) // 2
        capped = model(ids, max_patches=cap)
        forced = model(ids, boundary_mask=free.boundary_mask & (free.boundary_mask.cumsum(-1) <= cap))
    assert torch.equal(capped.boundary_mask, free.boundary_mask)
    torch.testing.assert_close(capped.logits, forced.logits, atol=1e-6, rtol=0)
    last = int(torch.nonzero(free.boundary_mask[0])[cap - 1])  # the P-th boundary
    torch.testing.assert_close(capped.logits[:, :last + 1], free.logits[:, :last + 1], atol=1e-5, rtol=0)
    assert not torch.allclose(capped.logits[:, last + 2:], free.logits[:, last + 2:], atol=1e-3)


def test_equal_length_texts_score_as_alone(fixture_model_dir):
    """Equal byte lengths but different patch counts: scoring still keeps the rows independent."""
    model = load_fixture_model(fixture_model_dir)
    meta, _ = read_cases(fixture_model_dir)
    texts = meta["batched_forward"]["texts"]
    assert len({len(t.encode()) for t in texts}) == 1
    for text, together in zip(texts, model.score(texts)):
        torch.testing.assert_close(together.byte_logprobs, model.score([text])[0].byte_logprobs, atol=1e-5, rtol=0)


def test_left_padded_forward_rows_equal_single_rows(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    texts = ["Hello there, general", "Hi", "Größe 大小"]
    ids, mask = model.tokenizer.batch(texts, padding_side="left")
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        for row, text in enumerate(texts):
            single = model(torch.tensor([model.tokenizer.encode(text)]))
            n = single.logits.shape[1]
            torch.testing.assert_close(out.logits[row, -n:], single.logits[0], atol=1e-5, rtol=0)
            assert torch.equal(out.boundary_mask[row, -n:], single.boundary_mask[0])
            assert not out.boundary_mask[row, :-n].any() and (out.boundary_logprobs[row, :-n] == -100000).all()
        with pytest.raises(ValueError, match="contiguous"):
            model(ids, attention_mask=torch.tensor([[True, False, True] + [True] * (ids.shape[1] - 3)] * 3))

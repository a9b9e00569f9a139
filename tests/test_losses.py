"""Every loss and metric against arithmetic written out by hand on tiny tensors, plus the
compression schedule and patch rewriting (docs/training-reference.md §3, §4.2, §6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bolmo.errors import ConfigError
from bolmo.train.compression import (apply_merges, bpe_merge_positions, compression_ratio,
                                     interpolate_space_boundaries, space_patch_lens)
from bolmo.train.labels import boundary_targets, fuse_labels
from bolmo.train.losses import (BatchCounts, aligned_cosine, alm_divergence, bits_per_byte, boundary_bce,
                                boundary_loss, boundary_metrics, byte_logprobs, fused_cross_entropy,
                                local_decoder_loss, local_encoder_loss, log1mexp, loss_schedule_multiplier,
                                normalize_terms, patch_alignment, ratio_loss, total_loss)

ln = math.log


def close(a: torch.Tensor | float, b: float, tol: float = 1e-5) -> bool:
    value = float(a.detach()) if isinstance(a, torch.Tensor) else a
    return abs(value - b) <= tol * max(1.0, abs(b))


def test_log1mexp_values_and_gradients() -> None:
    for x in (-1e-7, -1e-3, -0.5, -ln(2), -1.0, -30.0):
        assert close(log1mexp(torch.tensor(x, dtype=torch.float64)), ln(-math.expm1(x)), 1e-9)
    x = torch.tensor([-1e-6, -0.1, -5.0, -200.0], requires_grad=True)
    log1mexp(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_boundary_loss_by_hand() -> None:
    # p = [1 (BOS, log p = 0), 0.3, 0.9, 0.6, (lookahead pad)], y = [1, 0, 1, 0, 0].
    logp = torch.tensor([[0.0, ln(0.3), ln(0.9), ln(0.6), -1e5]], requires_grad=True)
    y = torch.tensor([[1, 0, 1, 0, 0]], dtype=torch.bool)
    byte_mask = torch.tensor([[True, True, True, False, False]])  # byte 3 is the last real byte
    loss = boundary_loss(logp, y, byte_mask, lookahead=1)
    # BOS: log p clipped to -1e-3 -> 1e-3; byte 1: -log(0.7); byte 2: -log(0.9); byte 3 masked.
    assert close(loss, 1e-3 - ln(0.7) - ln(0.9))
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    # Per-byte values, including the masked ones: y=0 at log p = -1e5 gives -log(1 - e^-1e5) = 0.
    bce = boundary_bce(logp.detach(), y)
    assert close(bce[0, 3], -ln(0.4)) and close(bce[0, 4], 0.0)
    # The last lookahead position is excluded even when it has a label.
    assert close(boundary_loss(logp, y, torch.ones(1, 5, dtype=torch.bool)), 1e-3 - ln(0.7) - ln(0.9) - ln(0.4))


def test_ratio_loss_by_hand() -> None:
    logp = torch.log(torch.tensor([[0.9, 0.2, 0.1, 0.6, 0.5]]))
    active = torch.tensor([[True, False, False, True, False]])
    mask = torch.tensor([[True, True, True, True, False]])
    frac, mean_p, r = 2 / 4, (0.9 + 0.2 + 0.1 + 0.6) / 4, 4.0
    expected = r / (r - 1) * ((1 - frac) * (1 - mean_p) + frac * mean_p * (r - 1))
    assert close(ratio_loss(active, logp, mask, 4.0), expected)
    # At F = G = 1/R the loss is 1 (its minimum along F = G).
    assert close(ratio_loss(torch.tensor([[True, False]]), torch.log(torch.tensor([[0.5, 0.5]])),
                            torch.ones(1, 2, dtype=torch.bool), 2.0), 1.0)


def test_fused_cross_entropy_and_bits_per_byte_by_hand() -> None:
    logits = torch.zeros(1, 3, 520)
    logits[0, 0, 10] = ln(4.0)  # p(10) = 4 / (519 + 4)
    logits[0, 1, 270] = ln(9.0)  # fused id 270 = id 10 + boundary: p = 9 / (519 + 9)
    logits[0, 1, 10] = ln(2.0)
    logprobs = logits.log_softmax(-1)
    labels = torch.tensor([[10, 270, -100]])
    ce = fused_cross_entropy(logprobs, labels)
    expected = (-ln(4 / 523) - ln(9 / 529)) / 2
    assert close(ce, expected)
    assert close(bits_per_byte(ce), expected / ln(2))
    assert close(bits_per_byte(torch.tensor(6.0), 3), 2 / ln(2))
    # Byte-level: the boundary flag marginalised, p(byte 10) = p(10) + p(270).
    blp = byte_logprobs(logprobs, labels)
    assert close(blp[0, 0], ln((4 + 1) / 523)) and close(blp[0, 1], ln((2 + 9) / 529)) and blp[0, 2] == 0


def test_fuse_labels_and_boundary_targets() -> None:
    ids = torch.tensor([[1, 10, 11, 12, 1, 13, 14, 0]])
    lens = torch.tensor([[1, 2, 1, 1, 2, 0]])  # ends at 0, 2, 3, 4, 6
    y = boundary_targets(ids, lens)
    assert y.long().tolist() == [[1, 0, 1, 0, 1, 0, 1, 0]]  # 3 dropped: byte 4 is EOS
    assert boundary_targets(ids, lens, skip_boundary_before_eos=False).long().tolist() == [[1, 0, 1, 1, 1, 0, 1, 0]]
    labels = torch.tensor([[10, 11, 12, 1, 13, 14, -100, -100]])
    fused = fuse_labels(labels, y)
    assert fused.tolist() == [[10, 271, 12, 261, 13, 14, -100, -100]]  # byte 6 is the last real byte
    assert fuse_labels(fused, torch.zeros_like(y)).tolist() == labels.tolist()  # re-fusing starts from plain


def test_patch_alignment() -> None:
    # 8 bytes, patches [1, 3, 2, 2]; active boundaries at 0, 3, 5 (stage 2 could differ from ends).
    bm = torch.tensor([[1, 0, 0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    pos, aligned, used = patch_alignment(bm, torch.tensor([[1, 3, 2, 2]]))
    assert pos[0, :3].tolist() == [0, 3, 5] and aligned[0, :3].tolist() == [0, 1, 2]
    assert used.tolist() == [[True, True, True, False]]


def test_local_encoder_loss_by_hand() -> None:
    z = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]]], requires_grad=True)  # student after block 0
    h = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [2.0, 2.0]]])  # teacher after block 0
    emb_s, emb_t = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    aligned = torch.tensor([[0, 2, 1]])
    used = torch.tensor([[True, True, False]])
    # Slot 0 vs h[0]: |(0, 2)| = 2; slot 1 vs h[2]: |(-2, -2)| = sqrt(8); slot 2 unused. / sqrt(d = 2).
    block = (2 + math.sqrt(8)) / math.sqrt(2)
    assert close(local_encoder_loss([None, z], [None, h], aligned, used, [0.0, 4.0]), 4 * block)
    embed = 2 * math.sqrt(2) / math.sqrt(2)  # each used slot: |(-1, -1)| / sqrt(2) = 1
    assert close(local_encoder_loss([emb_s, z], [emb_t, h], aligned, used, [0.5, 4.0]), 0.5 * embed + 4 * block)
    # cos((1, 2), (1, 0)) = 1/sqrt(5); a zero vector has cosine 0.
    assert close(local_encoder_loss([None, z], [None, h], aligned, used, [0, 1.0], "cos_dist"),
                 (1 - 1 / math.sqrt(5)) + 1.0)
    assert close(aligned_cosine(z, h, aligned, used), (1 / math.sqrt(5) + 0.0) / 2)
    with pytest.raises(ConfigError):
        local_encoder_loss([None, z], [None, h], aligned, used, [0, 1.0], "l1")


def _binarized_kl(y: float, yhat: float, temp: float = 5.0, eps: float = 1e-6) -> float:
    pt, ps = math.exp(y / temp - eps), math.exp(yhat / temp - eps)
    return pt * ln(pt / ps) + (1 - pt) * ln((1 - pt) / (1 - ps))


def test_alm_divergence_formulas() -> None:
    y, yhat = torch.tensor([ln(0.18)], dtype=torch.float64), torch.tensor([ln(0.06)], dtype=torch.float64)
    assert close(alm_divergence(y, yhat), _binarized_kl(ln(0.18), ln(0.06)), 1e-9)
    assert close(alm_divergence(y, yhat, "reverse_kl"), _binarized_kl(ln(0.06), ln(0.18)), 1e-9)
    tvd = abs(math.exp(ln(0.18) / 5 - 1e-6) - math.exp(ln(0.06) / 5 - 1e-6))
    assert close(alm_divergence(y, yhat, "tvd"), tvd, 1e-9)
    assert close(alm_divergence(y, yhat, "tvd_temp_limit"), abs(ln(0.18) - ln(0.06)), 1e-9)
    assert close(alm_divergence(y, y), 0.0, 1e-9)


def test_local_decoder_loss_by_hand() -> None:
    # Bytes: 0 BOS, 1 'a', 2 'b', 3 'c', 4 PAD; patches [1, 2 ("ab"), 1 ("c")], P = 3.
    a, b_, c = ord("a") + 4, ord("b") + 4, ord("c") + 4
    labels = torch.tensor([[a, b_ + 260, c, -100, -100]])
    lp = torch.full((1, 5, 520), ln(1e-4))
    lp[0, 0, a], lp[0, 1, b_ + 260], lp[0, 2, c] = ln(0.5), ln(0.4), ln(0.8)
    for ws in (36, 13, 14):  # space, tab, LF after patch 1 (byte 2) and after patch 2 (byte 3)
        lp[0, 2, ws], lp[0, 3, ws] = ln(0.1), ln(0.2 / 3)
    lp.requires_grad_(True)
    # Teacher vocabulary: 0 EOS, 1 "ab", 2 "c", 3 " x" (whitespace-initial); o = ["ab", "c", EOS].
    q = torch.tensor([[[0.1, 0.6, 0.2, 0.1], [0.1, 0.1, 0.5, 0.3], [0.5, 0.1, 0.1, 0.3]]])
    teacher_logits, o = q.log() + 7.0, torch.tensor([[1, 2, 0]])  # a constant shift must not matter
    lens = torch.tensor([[1, 2, 1]])
    plain = local_decoder_loss(lp, labels, lens, teacher_logits, o)
    # Student chunk log-probs: patch 1 = 0.5 * 0.4, patch 2 = 0.8; teacher: q[0, "ab"], q[1, "c"].
    assert torch.allclose(plain.student, torch.tensor([[ln(0.2), ln(0.8)]]))
    assert torch.allclose(plain.teacher, torch.tensor([[ln(0.6), ln(0.5)]]))
    assert close(plain.loss, _binarized_kl(ln(0.6), ln(0.2)) + _binarized_kl(ln(0.5), ln(0.8)), 1e-4)
    debiased = local_decoder_loss(lp, labels, lens, teacher_logits, o, whitespace_token_ids=torch.tensor([3]))
    # Student: times P(whitespace byte next) = 0.3 and 0.2; teacher: times q[k+1, " x"] = 0.3 and 0.3.
    assert torch.allclose(debiased.student, torch.tensor([[ln(0.06), ln(0.16)]]), atol=1e-6)
    assert torch.allclose(debiased.teacher, torch.tensor([[ln(0.18), ln(0.15)]]), atol=1e-6)
    assert close(debiased.loss, _binarized_kl(ln(0.18), ln(0.06)) + _binarized_kl(ln(0.15), ln(0.16)), 1e-4)
    debiased.loss.backward()
    assert torch.isfinite(lp.grad).all()
    m = debiased.metrics()
    assert close(m["local_decoder_mae_simple"], (abs(ln(0.18 / 0.06)) + abs(ln(0.15 / 0.16))) / 2, 1e-4)
    assert close(m["local_decoder_teacher_mean_p_simple"], (0.18 + 0.15) / 2, 1e-4)
    # An empty patch slot is masked out.
    short = local_decoder_loss(lp.detach(), labels, torch.tensor([[1, 2, 0]]), teacher_logits, o)
    assert close(short.loss, _binarized_kl(ln(0.6), ln(0.2)), 1e-4)


def test_boundary_metrics_by_hand() -> None:
    logp = torch.log(torch.tensor([[0.9, 0.7, 0.2, 0.6, 0.1, 0.8]]))  # predicted: 1 1 0 1 0 (1 masked)
    y = torch.tensor([[1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    m = boundary_metrics(logp, y, mask)
    p, r = 2 / 3, 2 / 3  # tp = bytes 0, 3; fp = byte 1; fn = byte 2
    assert close(m["boundary_acc"], 3 / 5) and close(m["boundary_precision"], p) and close(m["boundary_recall"], r)
    assert close(m["boundary_f1"], 2 * p * r / (p + r)) and close(m["boundary_label_mean"], 3 / 5)
    assert close(m["boundary_mean"], 3 / 5)
    assert close(boundary_metrics(logp, y, mask, active=logp > ln(0.5))["boundary_mean"], 3 / 5)


def test_normalisation_and_total() -> None:
    mb = {"labels": torch.tensor([[5, 6, -100, -100], [5, -100, -100, -100]]),
          "patch_lens": torch.tensor([[1, 2, 0], [1, 1, 0]])}
    counts = BatchCounts.of([mb, mb])
    assert (counts.n_bytes, counts.n_patches) == (6, 4)  # BOS patches are not counted
    raw = {"ce": torch.tensor(2.0), "boundary": torch.tensor(3.0), "local_decoder": torch.tensor(1.5),
           "local_encoder": torch.tensor(4.0), "ratio": torch.tensor(0.5)}
    terms = normalize_terms(raw, counts, batch_size=2, seq_len=4, num_patches=3)
    assert close(terms["ce"], 2.0 * 2 * 4 / 6) and close(terms["boundary"], 3.0 / 6)
    assert close(terms["local_decoder"], 1.5 * 4 / (2 * 6)) and close(terms["local_encoder"], 4.0 / 4)
    assert close(terms["ratio"], 0.5)
    total = total_loss(terms, {"ce": 1, "boundary": 4, "local_decoder": 1, "local_encoder": 0},
                       {"boundary": 0.5})
    assert close(total, 16 / 6 + 4 * 0.5 * 0.5 + 0.5)  # ce + 4 * 0.5 * boundary + local_decoder
    assert loss_schedule_multiplier(None, 10) == 1.0 and loss_schedule_multiplier("constant", 10) == 1.0
    assert loss_schedule_multiplier("linear_decrease:100", 25) == 0.75
    assert loss_schedule_multiplier("linear_decrease:100", 250) == 0.0
    with pytest.raises(ConfigError):
        loss_schedule_multiplier("cosine", 1)


# ------------------------------------------------------------------------------ compression

def test_compression_schedule() -> None:
    assert compression_ratio(0, 4.0, 8.0, 100) == 4.0
    assert compression_ratio(25, 4.0, 8.0, 100) == 5.0
    assert compression_ratio(100, 4.0, 8.0, 100) == 8.0 and compression_ratio(10**6, 4.0, 8.0, 100) == 8.0


def test_bpe_merge_positions_reproduce_bpe() -> None:
    # (5, 6) occurs twice: merged first at positions 0 and 2 - 1 = 1; then all pairs are unique.
    merges = bpe_merge_positions(np.array([5, 6, 5, 6, 7]), np.random.default_rng(0))
    assert merges[:2].tolist() == [0, 1] and len(merges) == 4
    # "a a a a": non-overlapping left to right -> (a a)(a a), recorded at 0 and 1.
    assert bpe_merge_positions(np.array([3, 3, 3, 3]), np.random.default_rng(0))[:2].tolist() == [0, 1]
    # Runs while len / len0 > max_compression_ratio; one round merges every occurrence of its pair,
    # so the last round may overshoot: 100 tokens with period 7 -> 86 (14 x (0 1)) -> 43 ...
    long = bpe_merge_positions(np.arange(100) % 7, np.random.default_rng(1), max_compression_ratio=0.5)
    assert long[:14].tolist() == [6 * k for k in range(14)] and 100 - len(long) <= 50
    # Same seed, same list.
    seq = np.random.default_rng(3).integers(0, 5, 64)
    first, again = (bpe_merge_positions(seq, np.random.default_rng(9)) for _ in range(2))
    assert (first == again).all()


def test_apply_merges_by_hand() -> None:
    # 10 bytes, patches [BOS 1, 2, 3, 1, 4] -> ratio 2; target 3.
    out = apply_merges([1, 2, 3, 1, 4, 0], [1, 0, 2], n_bytes=10, ratio=3.0)
    # m=1 joins patches 2 and 3 -> [1, 2, 4, 4] (2.5); m=0 joins 1 and 2 -> [1, 6, 4] (3.33): stop.
    assert out.tolist() == [1, 6, 4, 0, 0, 0]
    assert apply_merges([1, 2, 3], [5, -1, 0], n_bytes=6, ratio=10.0).tolist() == [1, 5, 0]
    assert apply_merges([1, 2, 3], [0], n_bytes=6, ratio=1.0).tolist() == [1, 2, 3]


def test_space_patches_example() -> None:
    text = b"Hello, world!  The cat's 123"
    ids = [1] + [x + 4 for x in text]
    lens = space_patch_lens(ids).tolist()
    pieces, start = [], 1
    for n in lens[1:]:
        pieces.append(text[start - 1:start - 1 + n].decode())
        start += n
    assert lens[0] == 1 and pieces == ["Hello", ",", " world", "!", "  The", " cat", "'", "s", " 123"]
    assert space_patch_lens([x + 4 for x in b"a" * 40]).tolist() == [16, 16, 8]


def test_space_interpolation_endpoints() -> None:
    sub = np.array([1, 2, 3, 2, 0])  # ends 0, 2, 5, 7
    space = np.array([1, 5, 2, 0, 0])  # ends 0, 5, 7
    rng = np.random.default_rng(0)
    assert interpolate_space_boundaries(sub, space, 7, ratio=1.0, rng=rng).tolist() == sub.tolist()
    assert interpolate_space_boundaries(sub, space, 7, ratio=100.0, rng=rng).tolist() == space.tolist()


def test_training_bits_per_byte_fold_bytes_as_scoring_does(monkeypatch) -> None:
    """One folded byte log-probability: training's metric calls scoring's function."""
    import bolmo.scoring
    import bolmo.train.losses

    calls = []

    def spy(logits, targets):
        calls.append(targets.clone())
        return folded(logits, targets)

    folded = bolmo.scoring.folded_logprobs
    monkeypatch.setattr(bolmo.train.losses, "folded_logprobs", spy)
    logits = torch.randn(1, 3, 520)
    labels = torch.tensor([[10, 270, -100]])
    out = bolmo.train.losses.byte_logprobs(logits.log_softmax(-1), labels)
    assert [t.tolist() for t in calls] == [[[10, 10, 0]]]
    torch.testing.assert_close(out[0, :2], folded(logits[:, :2], torch.tensor([[10, 10]]))[0])
    assert out[0, 2] == 0

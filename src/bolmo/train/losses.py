"""Stage-1 and stage-2 losses and metrics as pure functions on tensors (docs/training-reference.md §3, §4, §6).

Shapes: B instances, L byte slots, P patch slots (= S teacher positions), V fused byte vocabulary
(520, or 640 when padded), Vs subword vocabulary, d width. Everything is computed in float32.

Each loss returns what docs/training-reference.md calls its *raw* value (a sum, or for `ce` a mean);
`normalize_terms` applies the exact per-batch normalisers of §3.6 (including the reference's
quirky ones) and `total_loss` weights and sums them. Keeping the normalisers in one place lets
a trainer with gradient accumulation count bytes and patches over the whole rank batch first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bolmo.config import BYTE_OFFSET, PLAIN_VOCAB
from bolmo.errors import ConfigError
from bolmo.scoring import folded_logprobs
from bolmo.train.labels import IGNORE_INDEX
from bolmo.train.vocab import WHITESPACE_BYTES

LN2 = math.log(2.0)
# Plain ids of space, LF and tab: the student's side of ALM debiasing (fused ids excluded).
WHITESPACE_BYTE_IDS = tuple(b + BYTE_OFFSET for b in WHITESPACE_BYTES)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0, stable at both ends: log(-expm1(x)) for x > -ln 2, else
    log1p(-e^x). Each branch sees a clamped input so the unused one cannot put NaN in gradients."""
    near = torch.log(-torch.expm1(x.clamp(min=-LN2)))
    far = torch.log1p(-torch.exp(x.clamp(max=-LN2)))
    return torch.where(x > -LN2, near, far)


# --------------------------------------------------------------------------- boundary predictor

def boundary_loss_mask(byte_mask: torch.Tensor, lookahead: int = 1) -> torch.Tensor:
    """bm[t] = byte_mask[t] and t < L - lookahead: [B, L] bool -> [B, L] bool."""
    keep = torch.arange(byte_mask.shape[1], device=byte_mask.device) < byte_mask.shape[1] - lookahead
    return byte_mask & keep


def boundary_bce(boundary_logprobs: torch.Tensor, targets: torch.Tensor, clip: float = -1e-3) -> torch.Tensor:
    """Per-byte BCE [B, L]: -(y·min(log p, clip) + (1-y)·log(1 - exp(min(log p, clip)))).
    The clip keeps log(1-p) finite where the predictor is certain (log p = 0 at BOS)."""
    logp = boundary_logprobs.float().clamp(max=clip)
    y = targets.float()
    return -(y * logp + (1.0 - y) * log1mexp(logp))


def boundary_loss(boundary_logprobs: torch.Tensor, targets: torch.Tensor, byte_mask: torch.Tensor,
                  lookahead: int = 1) -> torch.Tensor:
    """Raw boundary loss: Σ_t BCE_t · bm_t over [B, L] (targets: the subword boundaries, also in
    stage 2). Normalised by N_b in `normalize_terms`."""
    bce = boundary_bce(boundary_logprobs, targets)
    return torch.where(boundary_loss_mask(byte_mask, lookahead), bce, 0.0).sum()


def ratio_loss(boundary_mask: torch.Tensor, boundary_logprobs: torch.Tensor, mask: torch.Tensor,
               target_ratio: float) -> torch.Tensor:
    """H-Net ratio loss: R/(R-1) · ((1-F)(1-G) + F·G·(R-1)), F = fraction of active boundaries and
    G = mean boundary probability over `mask` ([B, L] each), R = target bytes per patch. Its
    minimum pushes G towards 1/R; F carries no gradient (it is a hard decision)."""
    m = mask.float()
    count = m.sum()
    frac = (boundary_mask.float() * m).sum() / count
    mean_p = (boundary_logprobs.float().exp() * m).sum() / count
    r = target_ratio
    return r / (r - 1.0) * ((1 - frac) * (1 - mean_p) + frac * mean_p * (r - 1.0))


# --------------------------------------------------------------------------- next-byte CE

def fused_cross_entropy(logprobs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over {t: labels[t] != -100} of -logprobs[t, labels[t]], with logprobs =
    log_softmax(logits) [B, L, V] and fused labels [B, L] (the §3.2 CE_mb, nats per byte)."""
    return F.nll_loss(logprobs.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def byte_logprobs(logprobs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of the next *byte* with the boundary flag marginalised out:
    log(p[x] + p[x + 260]), x the plain label; 0 where labels == -100. [B, L, V], [B, L] -> [B, L].
    The folding is scoring's own (`bolmo.scoring.folded_logprobs`), so training's bits per byte
    and `bolmo score` measure the same thing."""
    plain = torch.where(labels >= 0, labels % PLAIN_VOCAB, 0)
    return torch.where(labels != IGNORE_INDEX, folded_logprobs(logprobs, plain), 0.0)


def bits_per_byte(nats: torch.Tensor | float, n_bytes: torch.Tensor | int | None = None) -> torch.Tensor | float:
    """nats / (ln 2 · n_bytes); with n_bytes None, `nats` is already per byte (e.g. the mean CE)."""
    return nats / LN2 if n_bytes is None else nats / (LN2 * n_bytes)


# --------------------------------------------------------------------------- patch bookkeeping

def patch_index(patch_lens: torch.Tensor, length: int) -> torch.Tensor:
    """pid [B, L]: the true patch holding byte t; P for bytes after the last non-empty patch."""
    ends = patch_lens.cumsum(-1)
    t = torch.arange(length, device=patch_lens.device).expand(patch_lens.shape[0], length).contiguous()
    return torch.searchsorted(ends, t, right=True)


def patch_alignment(boundary_mask: torch.Tensor, patch_lens: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled slots vs teacher positions (§3.1 step 3): [B, L] bool, [B, P] -> three [B, P]:
    s_j (byte position of the j-th active boundary; surplus slots hold non-boundary positions),
    a_j = pid(s_j) (aligned teacher index), m_j (slot j is used and aligned)."""
    B, L = boundary_mask.shape
    P = patch_lens.shape[1]
    t = torch.arange(L, device=boundary_mask.device).expand(B, L)
    order = torch.where(boundary_mask, t, t + L).argsort(dim=1)
    if L < P:
        order = F.pad(order, (0, P - L))
    positions = order[:, :P]
    aligned = patch_index(patch_lens, L).gather(1, positions)
    used = torch.arange(P, device=positions.device) < boundary_mask.sum(1, keepdim=True).clamp(max=P)
    return positions, aligned, used & (aligned < P)


# --------------------------------------------------------------------------- local encoder

def rep_distance(u: torch.Tensor, v: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """[..., d] x2 -> [...]: "l2" ‖u-v‖/√d; "l2_rmsnorm" that divided by RMS(v); "cos_dist" 1 - cos."""
    u, v = u.float(), v.float()
    if kind == "cos_dist":
        return 1.0 - F.cosine_similarity(u, v, dim=-1)
    dist = (u - v).norm(dim=-1) / math.sqrt(u.shape[-1])
    if kind == "l2":
        return dist
    if kind == "l2_rmsnorm":
        return dist / v.pow(2).mean(-1).sqrt()
    raise ConfigError(f"rep_compare_fn must be 'l2', 'l2_rmsnorm' or 'cos_dist', got {kind!r}")


def gather_aligned(teacher: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
    """teacher [B, P, d] at the aligned indices [B, P] (clamped; unused slots are masked)."""
    index = aligned.clamp(max=teacher.shape[1] - 1)[..., None].expand(-1, -1, teacher.shape[-1])
    return teacher.gather(1, index)


def local_encoder_loss(student: Sequence[torch.Tensor | None], teacher: Sequence[torch.Tensor | None],
                       aligned: torch.Tensor, used: torch.Tensor, weights: Sequence[float],
                       compare: str = "l2") -> torch.Tensor:
    """Raw encoder loss Σ_i w_i Σ_j m_j · dist(student_i[j], teacher_i[a_j]) (§3.5).

    Entry 0 pairs the pooled patch vectors h_patch with the teacher's input embeddings E; entry
    i+1 pairs the student's patches after global block i (Z_i) with the teacher's residual stream
    H_i; each [B, P, d]. Released weights [0, 0, 0, 0, 4]: only after the 4th block counts.
    Zero-weight entries are skipped (they may be None). Normalised by N_p in `normalize_terms`."""
    total = torch.zeros((), device=aligned.device)
    for w, z, h in zip(weights, student, teacher, strict=True):
        if w == 0:
            continue
        dist = rep_distance(z, gather_aligned(h, aligned), compare)
        total = total + w * torch.where(used, dist, 0.0).sum()
    return total


def aligned_cosine(student: torch.Tensor, teacher: torch.Tensor, aligned: torch.Tensor,
                   used: torch.Tensor) -> torch.Tensor:
    """Metric: mean cosine similarity of student [B, P, d] and teacher[a_j] over used slots."""
    cos = F.cosine_similarity(student.float(), gather_aligned(teacher, aligned).float(), dim=-1)
    return torch.where(used, cos, 0.0).sum() / used.sum().clamp(min=1)


# --------------------------------------------------------------------------- local decoder (ALM)

def student_patch_logprobs(logprobs: torch.Tensor, labels: torch.Tensor, patch_lens: torch.Tensor) -> torch.Tensor:
    """M[k] = Σ_{t ≤ L-2, pid(t+1) = k+1} logprobs[t, labels[t]]: the student's log-probability of
    emitting patch k+1's bytes, fused boundary included. [B, L, V], [B, L], [B, P] -> [B, P-1]."""
    B, L, _ = logprobs.shape
    P = patch_lens.shape[1]
    picked = logprobs[:, :-1].float().gather(-1, labels[:, :-1].clamp(min=0)[..., None])[..., 0]
    slot = patch_index(patch_lens, L)[:, 1:]  # bytes outside real patches land in slot P (dropped)
    sums = torch.zeros(B, P + 1, device=logprobs.device).scatter_add(1, slot, picked)
    return sums[:, 1:P]


def student_whitespace_logprobs(logprobs: torch.Tensor, patch_lens: torch.Tensor,
                                whitespace_ids: Sequence[int] = WHITESPACE_BYTE_IDS) -> torch.Tensor:
    """logsumexp over the plain whitespace ids at end_{k+1}, the last byte of patch k+1: the
    student's log-probability that a whitespace byte follows the patch. -> [B, P-1]."""
    L = logprobs.shape[1]
    ends = patch_lens.cumsum(-1)[:, 1:] - 1
    ends = torch.where((ends >= L) | (ends < 0), 0, ends)
    ws = logprobs[..., list(whitespace_ids)].float().logsumexp(-1)  # [B, L]
    return ws.gather(1, ends)


def teacher_patch_logprobs(teacher_logits: torch.Tensor, teacher_targets: torch.Tensor,
                           whitespace_token_ids: torch.Tensor | None = None,
                           temperature: float = 1.0) -> torch.Tensor:
    """T[k] = log q[k, o[k]] with log q = log_softmax(teacher_logits / τ) [B, P, Vs], o [B, P];
    with `whitespace_token_ids` also + logsumexp_{v ∈ Σ} log q[k+1, v] (debiasing). -> [B, P-1].
    The full [B, P, Vs] log-softmax is never materialised."""
    z = teacher_logits.float() / temperature
    lse = z.logsumexp(-1)
    tok = z[:, :-1].gather(-1, teacher_targets[:, :-1, None])[..., 0] - lse[:, :-1]
    if whitespace_token_ids is None:
        return tok
    return tok + z[:, 1:, whitespace_token_ids].logsumexp(-1) - lse[:, 1:]


def alm_divergence(y: torch.Tensor, yhat: torch.Tensor, kind: str = "kl", temperature: float = 5.0,
                   eps: float = 1e-6) -> torch.Tensor:
    """Divergence of chunk log-probabilities y (teacher) and ŷ (student), elementwise.
    "kl": with a = y/T - ε, b = ŷ/T - ε: e^a·a + (1-e^a)·log(1-e^a) - e^a·b - (1-e^a)·log(1-e^b),
    i.e. KL(Bernoulli(P_t^(1/T)) ‖ Bernoulli(P_s^(1/T))); "reverse_kl" swaps a and b;
    "tvd" |e^a - e^b|; "tvd_temp_limit" |y - ŷ|."""
    if kind == "tvd_temp_limit":
        return (y - yhat).abs()
    a, b = y / temperature - eps, yhat / temperature - eps
    if kind == "reverse_kl":
        a, b = b, a
    elif kind == "tvd":
        return (a.exp() - b.exp()).abs()
    elif kind != "kl":
        raise ConfigError(f"div_fn must be 'kl', 'reverse_kl', 'tvd' or 'tvd_temp_limit', got {kind!r}")
    ea = a.exp()
    return ea * a + (1 - ea) * log1mexp(a) - ea * b - (1 - ea) * log1mexp(b)


@dataclass
class DistillTerms:
    """The local-decoder loss and what its metrics need, all [B, P-1] except `loss` (raw sum)."""

    loss: torch.Tensor
    divergence: torch.Tensor
    teacher: torch.Tensor  # y
    student: torch.Tensor  # ŷ
    mask: torch.Tensor  # pm_k = patch_lens[k+1] != 0

    def metrics(self) -> dict[str, torch.Tensor]:
        n = self.mask.sum().clamp(min=1)

        def mean(x: torch.Tensor) -> torch.Tensor:
            return torch.where(self.mask, x, 0.0).sum() / n

        return {"local_decoder_loss_simple": mean(self.divergence),
                "local_decoder_mae_simple": mean((self.teacher - self.student).abs()),
                "local_decoder_teacher_mean_p_simple": mean(self.teacher.exp())}


def local_decoder_loss(logprobs: torch.Tensor, labels: torch.Tensor, patch_lens: torch.Tensor,
                       teacher_logits: torch.Tensor, teacher_targets: torch.Tensor,
                       whitespace_token_ids: torch.Tensor | None = None, div_fn: str = "kl",
                       binarization_temp: float = 5.0, temperature: float = 1.0) -> DistillTerms:
    """ALM-style distillation (§3.4). Student: log_softmax of the 520-way logits [B, L, V] along
    the fused labels; teacher: logits [B, P, Vs] and its target tokens o [B, P]. Debiasing is on
    when `whitespace_token_ids` (`SubwordVocab.whitespace_initial_ids()`) is given: the student
    adds its whitespace-next log-probability and the teacher its whitespace-initial-next one.
    Raw loss Σ_k D(y[k], ŷ[k]) · pm_k, normalised in `normalize_terms`."""
    yhat = student_patch_logprobs(logprobs, labels, patch_lens)
    y = teacher_patch_logprobs(teacher_logits, teacher_targets, whitespace_token_ids, temperature)
    if whitespace_token_ids is not None:
        yhat = yhat + student_whitespace_logprobs(logprobs, patch_lens)
    mask = patch_lens[:, 1:] != 0
    div = alm_divergence(y, yhat, div_fn, binarization_temp)
    return DistillTerms(torch.where(mask, div, 0.0).sum(), div, y, yhat, mask)


# --------------------------------------------------------------------------- metrics

def boundary_metrics(boundary_logprobs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                     active: torch.Tensor | None = None, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """Predictor (p > 0.5) vs targets over `mask` ([B, L] each): accuracy, precision, recall,
    F1 (eps in the denominators), the label and active boundary fractions (bytes per patch ≈ 1 /
    boundary_mean; `active` defaults to the targets, as in teacher-forced stage 1)."""
    pred = boundary_logprobs > math.log(0.5)
    y, m = targets.bool(), mask.bool()
    n = m.sum().clamp(min=1)
    tp = (pred & y & m).sum()
    precision = tp / ((pred & m).sum() + eps)
    recall = tp / ((y & m).sum() + eps)
    active = y if active is None else active.bool()
    return {"boundary_acc": ((pred == y) & m).sum() / n, "boundary_precision": precision,
            "boundary_recall": recall, "boundary_f1": 2 * precision * recall / (precision + recall + eps),
            "boundary_mean": (active & m).sum() / n, "boundary_label_mean": (y & m).sum() / n}


# --------------------------------------------------------------------------- normalisation (§3.6)

@dataclass
class BatchCounts:
    """Counts over a rank's whole batch (all micro-batches), taken before the first forward."""

    n_bytes: int  # N_b: positions with a label
    n_patches: int  # N_p: patch slots k >= 1 with a non-zero length (BOS excluded)

    @classmethod
    def of(cls, micro_batches: Iterable[Mapping[str, torch.Tensor]]) -> "BatchCounts":
        n_bytes = n_patches = 0
        for mb in micro_batches:
            n_bytes += int((mb["labels"] != IGNORE_INDEX).sum())
            n_patches += int((mb["patch_lens"][:, 1:] != 0).sum())
        return cls(n_bytes, n_patches)


def normalize_terms(raw: Mapping[str, torch.Tensor], counts: BatchCounts, batch_size: int,
                    seq_len: int, num_patches: int) -> dict[str, torch.Tensor]:
    """Micro-batch objective terms exactly as the reference: ce·B·L/N_b (the mean CE rescaled),
    boundary/N_b, local_decoder·L/((P-1)·N_b), local_encoder/N_p; other terms (ratio) as given.
    B is this micro-batch's size; summing the terms over micro-batches gives per-byte and
    per-patch means over the rank batch."""
    B, L, P = batch_size, seq_len, num_patches
    scale = {"ce": B * L / counts.n_bytes, "boundary": 1 / counts.n_bytes,
             "local_decoder": L / ((P - 1) * counts.n_bytes), "local_encoder": 1 / max(counts.n_patches, 1)}
    return {name: value * scale.get(name, 1.0) for name, value in raw.items()}


def loss_schedule_multiplier(spec: str | None, step: int) -> float:
    """"constant" (or None) -> 1; "linear_decrease:N" -> max(1 - step/N, 0)."""
    if spec in (None, "constant"):
        return 1.0
    kind, _, n = spec.partition(":")
    if kind == "linear_decrease" and n.isdigit() and int(n) > 0:
        return max(1.0 - step / int(n), 0.0)
    raise ConfigError(f"loss schedule must be 'constant' or 'linear_decrease:N', got {spec!r}")


def total_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float],
               multipliers: Mapping[str, float] | None = None) -> torch.Tensor:
    """Σ weight · multiplier · term over the weighted losses; weight-0 losses are left out."""
    multipliers = multipliers or {}
    parts = [w * multipliers.get(name, 1.0) * terms[name] for name, w in weights.items() if w != 0]
    return torch.stack(parts).sum()

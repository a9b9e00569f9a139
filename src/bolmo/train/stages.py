"""What one micro-batch computes in each training stage: loss terms and metrics.

`TrainModule` wraps the model being trained (and, in stage 1, the teacher's own tensors) in one
module whose `forward` runs a micro-batch end to end, so FSDP sees a single root forward. The
model files stay inference-shaped; stage 1 composes their pieces here (docs/training-reference.md §3.1):

    stage 1: encoder -> predictor log-probs; pool at the *true* boundaries -> out_projection ->
             first K frozen global blocks (encoder loss only); teacher on its own tokens through
             the same frozen blocks (no grad); decoder on the teacher's last hidden states at the
             aligned positions ("oracle patch representations"); 520-way head.
    stage 2: the model's own forward (predicted boundaries, every block trains); labels re-fused
             with the predicted boundaries.
    subword: next-token cross-entropy of the OLMo model on the teacher token windows.

Normalisation (§3.6) uses counts over the *global* batch: boundary/N_b, local_decoder·L/((P-1)N_b),
local_encoder/N_p as the reference, and ce = (Σ nll / N_b)·(B·L/N_b) with B the global instances,
which is the reference's value for a step done as one micro-batch; summing per-micro-batch shares
of it keeps the objective independent of how the batch is split over ranks and micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bolmo.config import PAD_ID
from bolmo.errors import ConfigError
from bolmo.model.bolmo import BolmoForCausalLM
from bolmo.model.local import pool
from bolmo.model.olmo import OlmoForCausalLM
from bolmo.model.transformer import OlmoBlockStack
from bolmo.train.config import LossConfig
from bolmo.train.labels import IGNORE_INDEX, fuse_labels
from bolmo.train.losses import (
    LN2,
    BatchCounts,
    aligned_cosine,
    boundary_loss,
    boundary_loss_mask,
    boundary_metrics,
    byte_logprobs,
    fused_cross_entropy,
    gather_aligned,
    local_decoder_loss,
    local_encoder_loss,
    normalize_terms,
    patch_alignment,
    ratio_loss,
)

Tensors = dict[str, torch.Tensor]


class TeacherParts(nn.Module):
    """The teacher's own tensors: embeddings, final norm, LM head. Its blocks are not kept: in
    stage 1 they are the student's frozen global blocks (byteify-init copied them)."""

    def __init__(self, teacher: OlmoForCausalLM) -> None:
        super().__init__()
        self.embed_tokens = teacher.model.embed_tokens
        self.norm = teacher.model.norm
        self.lm_head = teacher.lm_head
        self.requires_grad_(False)


@dataclass
class Normaliser:
    """§3.6 normalisers with counts over the global batch (see the module docstring)."""

    counts: BatchCounts  # subword stage: n_bytes counts target tokens
    instances: int  # B: instances in the global batch
    seq_len: int  # L
    patches: int  # P = S

    def terms(self, raw: Tensors, n_labels: int, instances: int, subword: bool) -> Tensors:
        """raw: per-micro-batch values as the losses module returns them (ce a mean over the
        micro-batch's `n_labels` targets, ratio a mean over its `instances`)."""
        ce = raw["ce"] * (n_labels / self.counts.n_bytes)  # this micro-batch's share of the global mean
        if subword:
            return {"ce": ce}
        shares = {**raw, "ce": ce}
        if "ratio" in raw:
            shares["ratio"] = raw["ratio"] * (instances / self.instances)
        return normalize_terms(shares, self.counts, self.instances, self.seq_len, self.patches)


def run_blocks(stack: OlmoBlockStack, x: torch.Tensor, n: int | None = None) -> list[torch.Tensor]:
    """Outputs after each of the first `n` (default all) global blocks on causal, unpadded
    positions: x [B, T, D] -> list of [B, T, D]. Right-padded rows need no mask (causal)."""
    positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
    blocks = list(stack)[:n]
    outs = []
    for block, inputs in zip(blocks, stack.layer_inputs(positions, None, x.dtype)[:len(blocks)]):
        x = block(x, inputs.cos, inputs.sin, inputs.mask)
        outs.append(x)
    return outs


def encoder_loss_weights(losses: LossConfig, n_layers: int) -> list[float]:
    """[w0 (vs the teacher's embeddings), w1 .. wK (after global block i)]. K is
    `encoder_lookahead`, else the number of given block weights, else min(4, n_layers - 1) (at
    least 1); default block weights: 4 on the K-th only (the released [0, 0, 0, 4]). K = 0 compares
    with the teacher's embeddings only, so it needs `encoder_embedding_weight` > 0."""
    given = losses.encoder_lookahead_weights
    k = losses.encoder_lookahead
    if k is None:
        k = len(given) if given else min(4, max(n_layers - 1, 1))
    block_weights = given or ([0.0] * (k - 1) + [4.0] if k else [])
    if len(block_weights) != k or not 0 <= k <= n_layers:
        raise ConfigError(f"losses.encoder_lookahead_weights: {len(block_weights)} weights for "
                          f"encoder_lookahead={k} (the model has {n_layers} global blocks)")
    if k == 0 and losses.encoder_embedding_weight <= 0:
        raise ConfigError("losses.encoder_lookahead: 0 compares with the teacher's embeddings only; "
                          "set losses.encoder_embedding_weight > 0")
    return [losses.encoder_embedding_weight, *block_weights]


class TrainModule(nn.Module):
    """One micro-batch -> (normalised loss terms, metrics); see the module docstring."""

    def __init__(self, stage: str, model: nn.Module, losses: LossConfig, teacher: TeacherParts | None = None,
                 whitespace_token_ids: list[int] | None = None, pad_token_id: int | None = None) -> None:
        super().__init__()
        self.stage, self.model, self.teacher, self.losses = stage, model, teacher, losses
        self.pad_token_id = pad_token_id  # subword stage: targets equal to it are not trained
        if stage == "stage1":
            self.encoder_weights = encoder_loss_weights(losses, len(model.model.layers))
            ws = whitespace_token_ids if losses.alm_debiasing else None
            self.register_buffer("whitespace_ids", torch.tensor(ws) if ws is not None else None, persistent=False)
        self.freeze()

    def freeze(self) -> None:
        """Stage 1 freezes the global blocks (and the teacher); the other stages train everything."""
        self.model.requires_grad_(True)
        if self.stage == "stage1":
            self.model.model.layers.requires_grad_(False)

    def fsdp_units(self) -> list[nn.Module]:
        """Modules sharded as their own FSDP units: global blocks, then local mLSTM layers."""
        inner = self.model.model
        units = list(inner.layers)
        if isinstance(self.model, BolmoForCausalLM):
            units += [*inner.local_encoder.layers, *inner.local_decoder.layers]
        return units

    def labels(self, mb: Tensors) -> torch.Tensor:
        """Targets of the next-id cross-entropy: fused byte labels, or (subword) teacher tokens
        with the PAD_s filling ignored."""
        if self.stage != "subword":
            return mb["labels"]
        targets = mb["teacher_target_ids"]
        return targets.masked_fill(targets == self.pad_token_id, IGNORE_INDEX) if self.pad_token_id is not None else targets

    def counts(self, mb: Tensors) -> BatchCounts:
        return BatchCounts(int((self.labels(mb) != IGNORE_INDEX).sum()), int((mb["patch_lens"][:, 1:] != 0).sum()))

    def forward(self, mb: Tensors, norm: Normaliser, ratio_target: float) -> tuple[Tensors, Tensors]:
        if self.stage == "subword":
            raw, stats = self._subword(mb)
        elif self.stage == "stage1":
            raw, stats = self._stage1(mb)
        else:
            raw, stats = self._stage2(mb, ratio_target, norm.patches)
        n_labels = int((self.labels(mb) != IGNORE_INDEX).sum())
        return norm.terms(raw, n_labels, mb["input_ids"].shape[0], self.stage == "subword"), stats

    # ------------------------------------------------------------------ stages
    def _subword(self, mb: Tensors) -> tuple[Tensors, Tensors]:
        logits = self.model(mb["teacher_input_ids"]).logits
        lp = torch.log_softmax(logits.float(), dim=-1)
        labels = self.labels(mb)
        ce = fused_cross_entropy(lp, labels)
        # Bits per byte over the tokens whose bytes the instance holds (targets 0 .. S-2).
        nll = -lp[:, :-1].gather(-1, labels[:, :-1].clamp(min=0)[..., None])[..., 0]
        lens = mb["patch_lens"][:, 1:]
        nll = torch.where((lens != 0) & (labels[:, :-1] != IGNORE_INDEX), nll, 0.0)
        return {"ce": ce}, {"ce": ce.detach(), "bpb": nll.sum().detach() / (LN2 * lens.sum().clamp(min=1))}

    def _stage1(self, mb: Tensors) -> tuple[Tensors, Tensors]:
        model, teacher, losses = self.model, self.teacher, self.losses
        inner = model.model
        encoder, blocks = inner.local_encoder, inner.layers
        y, labels, patch_lens = mb["boundary_targets"], mb["labels"], mb["patch_lens"]

        h, _ = encoder(mb["input_ids"], mb["expanded_input_ids"])
        logp = encoder.boundary_predictor_module.logprobs(h)
        h_patch = encoder.out_projection(pool(h, y)[0])  # teacher-forced patches [B, P', D]
        n_used = h_patch.shape[1]
        _, aligned, used = patch_alignment(y, patch_lens)
        aligned, used = aligned[:, :n_used], used[:, :n_used]

        k = len(self.encoder_weights) - 1
        with torch.no_grad():
            embeds = teacher.embed_tokens(mb["teacher_input_ids"])
            hidden = run_blocks(blocks, embeds)
            teacher_logits = teacher.lm_head(teacher.norm(hidden[-1]))
        student = run_blocks(blocks, h_patch, k)  # frozen blocks, but gradients reach h_patch
        oracle = gather_aligned(hidden[-1], aligned)  # H_last[a_j], before the final norm
        out, _ = inner.local_decoder(h, oracle, y)
        lp = torch.log_softmax(model.lm_head(inner.norm(out)).float() / losses.temperature, dim=-1)  # §3.1 step 8

        weights = self.encoder_weights
        distill = local_decoder_loss(lp, labels, patch_lens, teacher_logits, mb["teacher_target_ids"],
                                     self.whitespace_ids, losses.div_fn, losses.binarization_temp, losses.temperature)
        raw = {
            "ce": fused_cross_entropy(lp, labels),
            "boundary": boundary_loss(logp, y, labels != IGNORE_INDEX, self._lookahead),
            "local_decoder": distill.loss,
            "local_encoder": local_encoder_loss(
                [h_patch if weights[0] else None, *student], [embeds if weights[0] else None, *hidden[:k]],
                aligned, used, weights, losses.rep_compare_fn),
        }
        stats = self._byte_stats(lp, labels, logp, y, y, raw)
        if k:
            stats["encoder_cos"] = aligned_cosine(student[-1].detach(), hidden[k - 1], aligned, used)
        stats.update({k: v.detach() for k, v in distill.metrics().items()})
        return raw, stats

    def _stage2(self, mb: Tensors, ratio_target: float, max_patches: int) -> tuple[Tensors, Tensors]:
        """§4.1: labels fused with the predicted boundaries; at most P = S patches pooled."""
        ids = mb["input_ids"]
        out = self.model(ids, attention_mask=ids != PAD_ID, expanded_ids=mb["expanded_input_ids"],
                         max_patches=max_patches)
        labels = fuse_labels(mb["labels"], out.boundary_mask)
        lp = torch.log_softmax(out.logits.float() / self.losses.temperature, dim=-1)
        y, logp = mb["boundary_targets"], out.boundary_logprobs
        mask = boundary_loss_mask(labels != IGNORE_INDEX, self._lookahead)
        raw = {"ce": fused_cross_entropy(lp, labels),
               "boundary": boundary_loss(logp, y, labels != IGNORE_INDEX, self._lookahead),
               "ratio": ratio_loss(out.boundary_mask, logp, mask, ratio_target)}
        return raw, self._byte_stats(lp, labels, logp, y, out.boundary_mask, raw)

    @property
    def _lookahead(self) -> int:
        return self.model.config.boundary_predictor_lookahead

    def _byte_stats(self, lp: torch.Tensor, labels: torch.Tensor, logp: torch.Tensor, targets: torch.Tensor,
                    active: torch.Tensor, raw: Tensors) -> Tensors:
        """Per-micro-batch metrics: CE (nats per byte, fused), bits per byte with the boundary
        flag marginalised, boundary BCE mean and predictor quality, bytes per patch."""
        byte_mask = labels != IGNORE_INDEX
        mask = boundary_loss_mask(byte_mask, self._lookahead)
        n = byte_mask.sum().clamp(min=1)
        stats = {"ce": raw["ce"].detach(), "bpb": -byte_logprobs(lp.detach(), labels).sum() / (LN2 * n),
                 "boundary_bce": raw["boundary"].detach() / mask.sum().clamp(min=1)}
        if "ratio" in raw:
            stats["ratio_loss"] = raw["ratio"].detach()
        stats.update(boundary_metrics(logp.detach(), targets, mask, active))
        stats["bytes_per_patch"] = 1.0 / stats["boundary_mean"].clamp(min=1e-6)
        return stats

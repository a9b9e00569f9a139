"""The whole byte-level Bolmo model, with HF state-dict names (`model.*`, `lm_head.weight`).

Forward order: bytes -> local encoder -> boundary predictor -> pooling + out_projection ->
global transformer on patches -> local decoder (depooling) -> final norm -> 520-way LM head.

Batches. With an `attention_mask` (right or left padding), padded bytes and padded patches are
masked, so every row gets exactly the result it would get alone (this is what `score` uses).
Left-padded rows are shifted to the left edge for the computation and the outputs shifted back:
the reference instead runs its mLSTMs over the pad bytes, which changes a padded row's result.
On padded positions the outputs are filler: boundary_mask False, boundary_logprobs -1e5. Without one,
the call reproduces the reference implementation bit for bit, including its batching quirk: when
rows have different patch counts, the reference right-aligns each row's patches in front of
filler patches without masking them, so short rows attend to that filler. Pass an all-True
`attention_mask` to get independent rows for an unpadded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bolmo.config import BolmoConfig
from bolmo.errors import InputError
from bolmo.model.counts import Components, parameter_counts
from bolmo.model.inputs import check_inputs
from bolmo.model.local import FORCE_OFF, LocalDecoder, LocalEncoder, pool
from bolmo.model.transformer import OlmoBlockStack
from bolmo.nn.norm import RMSNorm
from bolmo.nn.onednn import Linear


@dataclass
class BolmoOutput:
    logits: torch.Tensor  # [B, L, 520]: logits[:, t] predicts id t+1 and whether a patch ends after it
    boundary_mask: torch.Tensor  # [B, L] bool: byte t ends a patch
    boundary_logprobs: torch.Tensor  # [B, L] float32: log p(byte t ends a patch)


class BolmoModel(nn.Module):
    def __init__(self, config: BolmoConfig) -> None:
        super().__init__()
        self.local_encoder = LocalEncoder(config)
        self.local_decoder = LocalDecoder(config)
        self.layers = OlmoBlockStack(config.transformer_spec())
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class BolmoForCausalLM(nn.Module):
    """Bolmo with its tokenizer attached by the loader (`model.tokenizer`). Pure model code: what
    `bolmo.load` returns is `bolmo.inference.Bolmo`, this class plus score/generate/stream."""

    def __init__(self, config: BolmoConfig) -> None:
        super().__init__()
        self.config = config
        self.model = BolmoModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tokenizer = None  # a bolmo.tokenizer.ByteTokenizer, set by bolmo.load

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def expand(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """Subword expansion ids for `input_ids`, or None when the model does not use them."""
        if not self.config.add_expanded_embeddings:
            return None
        if self.tokenizer is None or self.tokenizer.expander is None:
            raise RuntimeError("expanded embeddings need a subword expander: load the model with bolmo.load")
        return self.tokenizer.expand(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        boundary_mask: torch.Tensor | None = None,
        expanded_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        max_patches: int | None = None,
    ) -> BolmoOutput:
        """input_ids [B, L] (BOS first, right-padded where `attention_mask` [B, L] is False).

        `boundary_mask` [B, L] forces the patching instead of predicting it (teacher forcing, and
        the slow generation oracle); `generator` drives "sample:1" boundary sampling.
        `max_patches` (training, stage 2: P) pools at most that many patches per row: boundaries
        after the P-th are dropped from the patching, so later bytes reuse the last patch; the
        returned `boundary_mask` is still the full decision. Inputs it cannot take raise InputError
        (`check_inputs`).
        """
        check_inputs(input_ids, self.config.vocab_size, attention_mask=attention_mask, boundary_mask=boundary_mask,
                     expanded_ids=expanded_ids)
        return self._forward(input_ids.long(), attention_mask, boundary_mask, expanded_ids, generator, max_patches)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 boundary_mask: torch.Tensor | None, expanded_ids: torch.Tensor | None,
                 generator: torch.Generator | None, max_patches: int | None) -> BolmoOutput:
        """`forward` on checked inputs (also the entry for the rotated rows of a left-padded batch)."""
        if attention_mask is not None:
            starts = padding_starts(attention_mask)
            if bool(starts.any()):
                return self._left_aligned(starts, input_ids, attention_mask.bool(), boundary_mask, expanded_ids,
                                          generator, max_patches)
        if expanded_ids is None:
            expanded_ids = self.expand(input_ids)
        lengths = attention_mask.sum(-1) if attention_mask is not None else None
        encoder = self.model.local_encoder

        h, _ = encoder(input_ids, expanded_ids)
        boundary_logprobs = encoder.boundary_predictor_module.logprobs(h, lengths)
        if boundary_mask is None:
            boundary_mask = encoder.boundary_predictor_module.decide(boundary_logprobs, lengths, generator)
        boundary_mask = boundary_mask.bool()
        if attention_mask is not None:
            boundary_mask = boundary_mask & attention_mask.bool()

        patching = boundary_mask
        if max_patches is not None:
            patching = boundary_mask & (boundary_mask.cumsum(-1) <= max_patches)
        patches, patch_valid = pool(h, patching)
        global_in = encoder.out_projection(patches)
        if bool(patch_valid.all()):
            global_out = self.model.layers(global_in)
        elif attention_mask is None:
            global_out = reference_patch_layout(self.model.layers, global_in, patch_valid)
        else:
            global_out = self.model.layers(global_in, patch_valid)

        y, _ = self.model.local_decoder(h, global_out, patching)
        logits = self.lm_head(self.model.norm(y))
        return BolmoOutput(logits=logits, boundary_mask=boundary_mask, boundary_logprobs=boundary_logprobs)

    def _left_aligned(self, starts: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      boundary_mask: torch.Tensor | None, expanded_ids: torch.Tensor | None,
                      generator: torch.Generator | None, max_patches: int | None) -> BolmoOutput:
        """Run a left-padded batch as the right-padded one (each row rotated by its padding)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        to_left = (positions + starts[:, None]) % input_ids.shape[1]
        back = (positions - starts[:, None]) % input_ids.shape[1]

        def rotate(x: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
            if x is None:
                return None
            return x.gather(1, index.view(*index.shape, *[1] * (x.dim() - 2)).expand_as(x))

        out = self._forward(rotate(input_ids, to_left), rotate(attention_mask, to_left), rotate(boundary_mask, to_left),
                            rotate(expanded_ids, to_left), generator, max_patches)
        return BolmoOutput(logits=rotate(out.logits, back),
                           boundary_mask=rotate(out.boundary_mask, back) & attention_mask,
                           boundary_logprobs=rotate(out.boundary_logprobs, back).masked_fill(~attention_mask, FORCE_OFF))

    def num_parameters_by_component(self) -> dict[str, int]:
        return parameter_counts(self, _COMPONENTS)


def padding_starts(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real position; refuses masks that are not one run of real
    positions per row (left or right padding only)."""
    mask = attention_mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device)
    starts = torch.where(mask, positions, mask.shape[1]).amin(-1).clamp(max=mask.shape[1] - 1)
    ends = starts + mask.sum(-1)
    if not bool((mask == ((positions >= starts[:, None]) & (positions < ends[:, None]))).all()):
        raise InputError("attention_mask: each row must be one contiguous run of real positions "
                         "(left or right padding)")
    return torch.where(mask.any(-1), starts, 0)


def reference_patch_layout(layers: nn.Module, patches: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Run the global layers the way the reference does for rows with fewer patches than P:
    each row's n real patches move to positions P-n..P-1, positions before them keep the row's
    first pooled entries (filler), nothing is masked, and the outputs move back afterwards."""
    n_patches = patches.shape[1]
    shift = (n_patches - valid.sum(-1)).unsqueeze(1)  # [B, 1]
    j = torch.arange(n_patches, device=patches.device).unsqueeze(0)
    source = torch.where(j >= shift, j - shift, j)
    expand = (-1, -1, patches.shape[-1])
    out = layers(torch.gather(patches, 1, source.unsqueeze(-1).expand(*expand)))
    back = (j + shift).clamp(max=n_patches - 1)
    return torch.gather(out, 1, back.unsqueeze(-1).expand(*expand))


# Components in forward order, as (label, state-dict name prefixes).
_COMPONENTS: Components = [
    ("byte embedding", ("model.local_encoder.byte_embedding.",)),
    ("subword embedding", ("model.local_encoder.subword_embedding.",)),
    ("encoder mLSTM layers", ("model.local_encoder.layers.",)),
    ("encoder norm + out_projection", ("model.local_encoder.post_last_block_norm.", "model.local_encoder.out_projection.")),
    ("boundary predictor", ("model.local_encoder.boundary_predictor_module.",)),
    ("global transformer", ("model.layers.",)),
    ("decoder initial_norm + in_projection", ("model.local_decoder.initial_norm.", "model.local_decoder.in_projection.")),
    ("decoder mLSTM layers", ("model.local_decoder.layers.",)),
    ("final norm", ("model.norm.",)),
    ("lm_head", ("lm_head.",)),
]

"""Bolmo's prefill: prompts (BOS + byte ids) through the model up to their held-back last id
(docs/architecture.md §6.2), in right-padded groups of similar length.

1. Predict boundaries over the whole prompt, then roll back one byte (with lookahead the
   predictor cannot decide whether the last prompt byte ends a patch). Encoder, pooling, global
   model and decoder run over the prompt minus that byte, filling the caches.
2. The first decode step feeds the held-back id again (`bolmo.generation.bolmo_engine`).

Why groups: a prompt costs about a thousand small tensor operations whatever its length (~10 ms
on d256 on a 2-core CPU, as much as ~100 bytes of its arithmetic); a group pays them once.
Padding costs arithmetic instead, so rows are sorted by length and cut into the contiguous runs
that minimise "per-group cost + rows x longest" (`length_groups`).

Every row gets what it gets alone: every position sees only earlier ones (the mLSTMs, the
boundary predictor's lookahead, pooling, causal attention over patches), and the padded steps of
the mLSTMs are the chunk padding's own "keep state, add nothing" steps (`MLSTMLayer.forward`'s
`valid`), so each row's states, keys/values and logits are its own, up to the float32 rounding of
products over more rows (well within the 1e-4 the tests hold). Rows whose rolled-back prompt is
one id run that id through the mLSTM's single-step form, as alone, so they group only together.
Boundary decisions are taken row by row with each row's own generator ("sample:p" thresholds
draw the same numbers as alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from bolmo.config import PAD_ID
from bolmo.generation.kv_cache import prefill as global_prefill
from bolmo.model.local import pool
from bolmo.nn.mlstm import MLSTMState

# A group's fixed cost, in padded byte positions. d256, two threads, the 8 and 32 mixed prompts of
# benchmarks/generate.py: 96 to 200 measure within noise of each other (32 rows: 0.53-0.55 s in 4-6
# groups, against 0.75-0.98 s one row at a time and 0.89-1.06 s in one group padded to 252 bytes).
GROUP_COST_POSITIONS = 128
GROUP_POSITIONS = 16384  # rows x longest in one group at most: bounds the prefill's memory
GROUP_ROWS = 64


@dataclass
class Prefill:
    """One row after its prompt (minus the last id) went through the model."""

    boundaries: list[bool]  # for the prompt ids before the last one
    encoder: list[MLSTMState]
    decoder: list[MLSTMState]
    patch_value: torch.Tensor  # [1, D]: initial_norm of the latest patch's global output
    keys: list[torch.Tensor]  # per global layer [1, KV, P, hd]
    values: list[torch.Tensor]
    logits: torch.Tensor | None  # [1, 520] predicting the last prompt id; None for a BOS-only prompt


def prefill_rows(model, rows: list[list[int]], generators: list[torch.Generator | None]) -> list[Prefill]:
    """Prefill every row (BOS + byte ids), in `length_groups`; results in the rows' order."""
    out: list[Prefill | None] = [None] * len(rows)
    for group in length_groups([len(ids) for ids in rows]):
        for i, result in zip(group, prefill_group(model, [rows[i] for i in group], [generators[i] for i in group])):
            out[i] = result
    return out


def length_groups(lengths: list[int], group_cost: int = GROUP_COST_POSITIONS) -> list[list[int]]:
    """Row indices cut into prefill groups: BOS-only rows alone, one-byte prompts together, and
    the rest sorted by length and cut, by dynamic programming over the sorted order, into the
    runs that minimise the sum of `group_cost + rows x longest` (each run at most GROUP_ROWS rows
    and GROUP_POSITIONS padded positions, unless it is one row)."""
    groups = [[i] for i, n in enumerate(lengths) if n == 1]
    one_byte = [i for i, n in enumerate(lengths) if n == 2]
    groups += [one_byte[s : s + GROUP_ROWS] for s in range(0, len(one_byte), GROUP_ROWS)]
    order = sorted((i for i, n in enumerate(lengths) if n > 2), key=lambda i: lengths[i])
    best = [0] * (len(order) + 1)  # best[j]: cheapest cut of order[:j]
    start = [0] * (len(order) + 1)  # where the last run of that cut starts
    for j in range(1, len(order) + 1):
        longest, best[j], start[j] = lengths[order[j - 1]], None, j - 1
        for s in range(j - 1, max(j - GROUP_ROWS, 0) - 1, -1):
            if j - s > 1 and (j - s) * longest > GROUP_POSITIONS:
                break
            cost = best[s] + group_cost + (j - s) * longest
            if best[j] is None or cost < best[j]:
                best[j], start[j] = cost, s
    cuts, j = [], len(order)
    while j > 0:
        cuts.append(order[start[j] : j])
        j = start[j]
    return groups + cuts[::-1]


def prefill_group(model, rows: list[list[int]], generators: list[torch.Generator | None]) -> list[Prefill]:
    """Prefill rows of one `length_groups` group together (right-padded)."""
    if len(rows[0]) == 1:
        return [bos_only(model) for _ in rows]
    inner, device = model.model, model.device
    encoder, decoder = inner.local_encoder, inner.local_decoder
    lengths = torch.tensor([len(ids) for ids in rows], device=device)
    longest = max(len(ids) for ids in rows)
    full = torch.tensor([ids + [PAD_ID] * (longest - len(ids)) for ids in rows], device=device)
    expanded = model.expand(full)
    h, _ = encoder(full, expanded)
    predictor = encoder.boundary_predictor_module
    logprobs = predictor.logprobs(h, lengths)
    mask = pad_sequence([predictor.decide(logprobs[b : b + 1, : len(ids)], None, generator)[0, :-1]
                         for b, (ids, generator) in enumerate(zip(rows, generators))], batch_first=True)
    # Roll back one byte: the held-back id is fed again by the first decode step.
    valid = None  # [B, longest - 1], False on padding; None when no row is padded (known on the host)
    if any(len(ids) < longest for ids in rows):
        valid = torch.arange(longest - 1, device=device) < (lengths - 1).unsqueeze(1)
    h, encoder_states = encoder(full[:, :-1], None if expanded is None else expanded[:, :-1], valid=valid)
    patches, _ = pool(h, mask)  # padded patches sit after every real one: causal attention never sees them
    g, keys, values = global_prefill(inner.layers, encoder.out_projection(patches))
    reset = torch.zeros_like(mask)
    reset[:, 0] = True  # the reference resets the decoder's forget gate at the first real byte
    y, decoder_states = decoder(h, g, mask, reset=reset, valid=valid)
    every = torch.arange(len(rows), device=device)
    logits = model.lm_head(inner.norm(y[every, lengths - 2]))
    counts = mask.sum(-1)
    patch_values = decoder.initial_norm(g[every, counts - 1])
    host_mask, host_counts = mask.tolist(), counts.tolist()
    return [
        Prefill(
            boundaries=host_mask[b][: len(ids) - 1],
            encoder=[s.index_select(every[b : b + 1]) for s in encoder_states],
            decoder=[s.index_select(every[b : b + 1]) for s in decoder_states],
            patch_value=patch_values[b : b + 1],
            keys=[k[b : b + 1, :, : host_counts[b]] for k in keys],
            values=[v[b : b + 1, :, : host_counts[b]] for v in values],
            logits=logits[b : b + 1],
        )
        for b, ids in enumerate(rows)
    ]


def bos_only(model) -> Prefill:
    """A BOS-only prompt: nothing precedes the held-back id; everything starts from zero."""
    encoder, decoder = model.model.local_encoder, model.model.local_decoder
    zeros = [layer.xlstm.zero_state(1, model.device) for layer in (*encoder.layers, *decoder.layers)]
    n_enc = len(encoder.layers)
    patch_value = torch.zeros(1, model.config.hidden_size, device=model.device, dtype=model.dtype)
    return Prefill([], zeros[:n_enc], zeros[n_enc:], patch_value, [], [], None)

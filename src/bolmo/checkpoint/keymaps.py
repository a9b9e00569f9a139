"""Tensor names per format pair, as explicit tables, plus the named reversible transforms.

Each table maps an OLMo-core name (without the DCP `model.` prefix) to its HF name; `{i}` stands
for a layer index. Every conversion renames with exactly one table, in either direction, and
refuses names the table does not know: an unmapped tensor is either a bug in the table or a
tensor the target model has no place for, and silently dropping it would hide both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import torch

from bolmo.errors import CheckpointError

# The global transformer blocks, shared by OLMo 2 / Olmo 3 and Bolmo's global model.
_GLOBAL_BLOCKS: dict[str, str] = {
    "blocks.{i}.attention.w_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blocks.{i}.attention.w_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blocks.{i}.attention.w_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blocks.{i}.attention.w_out.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blocks.{i}.attention.q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blocks.{i}.attention.k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blocks.{i}.attention_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blocks.{i}.feed_forward.w1.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blocks.{i}.feed_forward.w2.weight": "model.layers.{i}.mlp.down_proj.weight",
    "blocks.{i}.feed_forward.w3.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blocks.{i}.feed_forward_norm.weight": "model.layers.{i}.post_feedforward_layernorm.weight",
    "lm_head.norm.weight": "model.norm.weight",
    "lm_head.w_out.weight": "lm_head.weight",
}

# OLMo 2 / Olmo 3 (transformers' Olmo2ForCausalLM / Olmo3ForCausalLM).
OLMO_CORE_TO_HF: dict[str, str] = {
    "embeddings.weight": "model.embed_tokens.weight",
    **_GLOBAL_BLOCKS,
}


def _local_layers(side: str) -> dict[str, str]:
    """mLSTM blocks of the local encoder/decoder: same sub-names on both sides."""
    src, dst = f"local_{side}.blocks.{{i}}", f"model.local_{side}.layers.{{i}}"
    table = {
        f"{src}.xlstm_norm.weight": f"{dst}.pre_xlstm_layernorm.weight",
        f"{src}.feed_forward_norm.weight": f"{dst}.pre_feedforward_layernorm.weight",
        f"{src}.feed_forward.w1.weight": f"{dst}.mlp.gate_proj.weight",
        f"{src}.feed_forward.w2.weight": f"{dst}.mlp.down_proj.weight",
        f"{src}.feed_forward.w3.weight": f"{dst}.mlp.up_proj.weight",
    }
    for proj in ("q", "k", "v", "ogate_preact", "out_proj", "multihead_norm"):
        table[f"{src}.xlstm.{proj}.weight"] = f"{dst}.xlstm.{proj}.weight"
    for gate in ("igate_preact", "fgate_preact"):
        for kind in ("weight", "bias"):
            table[f"{src}.xlstm.{gate}.{kind}"] = f"{dst}.xlstm.{gate}.{kind}"
    return table


# Bolmo (docs/checkpoint-formats.md §4.2): a pure rename, plus the vocabulary padding below.
BOLMO_OLMO_CORE_TO_HF: dict[str, str] = {
    "local_encoder.embedding.weight": "model.local_encoder.byte_embedding.weight",
    "local_encoder.expanded_embeddings.weight": "model.local_encoder.subword_embedding.weight",
    **_local_layers("encoder"),
    "local_encoder.post_last_block_norm.weight": "model.local_encoder.post_last_block_norm.weight",
    "local_encoder.out_projection.weight": "model.local_encoder.out_projection.weight",
    "local_encoder.out_projection.bias": "model.local_encoder.out_projection.bias",
    "local_encoder.boundary_predictor_module.q_proj_layer.weight":
        "model.local_encoder.boundary_predictor_module.q_proj_layer.weight",
    "local_encoder.boundary_predictor_module.k_proj_layer.weight":
        "model.local_encoder.boundary_predictor_module.k_proj_layer.weight",
    **_local_layers("decoder"),
    "local_decoder.initial_norm.weight": "model.local_decoder.initial_norm.weight",
    "local_decoder.in_projection.weight": "model.local_decoder.in_projection.weight",
    "local_decoder.in_projection.bias": "model.local_decoder.in_projection.bias",
    **_GLOBAL_BLOCKS,
}

KEY_MAPS: dict[str, dict[str, str]] = {"olmo": OLMO_CORE_TO_HF, "bolmo": BOLMO_OLMO_CORE_TO_HF}

# Bolmo tensors whose rows are the byte vocabulary (padded in the native checkpoint).
BOLMO_VOCAB_ROWS_HF = ("model.local_encoder.byte_embedding.weight", "lm_head.weight")


@cache
def _compiled(family: str, to_hf: bool) -> tuple[tuple[re.Pattern[str], str], ...]:
    table = KEY_MAPS[family]
    pairs = table.items() if to_hf else ((hf, native) for native, hf in table.items())
    return tuple(
        (re.compile(re.escape(src).replace(re.escape("{i}"), r"(?P<i>\d+)") + r"\Z"), dst)
        for src, dst in pairs
    )


def rename(name: str, family: str, to_hf: bool) -> str | None:
    """The other format's name for `name`, or None when the table has no entry for it."""
    for pattern, dst in _compiled(family, to_hf):
        if m := pattern.match(name):
            return dst.replace("{i}", m.group("i")) if "{i}" in dst else dst
    return None


def rename_all(names: list[str], family: str, to_hf: bool, where: str) -> dict[str, str]:
    """Rename every name, or fail listing every name the table cannot place."""
    out, unmapped = {}, []
    for name in names:
        new = rename(name, family, to_hf)
        if new is None:
            unmapped.append(name)
        else:
            out[name] = new
    if unmapped:
        target = "HF" if to_hf else "OLMo-core"
        raise CheckpointError(
            f"{where}: {len(unmapped)} tensor(s) have no {target} name in the {family} key map "
            f"(extra or unknown tensors): {', '.join(unmapped[:20])}{' ...' if len(unmapped) > 20 else ''}"
        )
    clashes = len(out) - len(set(out.values()))
    if clashes:
        raise CheckpointError(f"{where}: {clashes} tensor name(s) map to the same target name")
    return out


def apply_rename_file(names: list[str], mapping: dict[str, str], where: str) -> dict[str, str]:
    """Old -> new for every output name under a user `--key-map` (applied after the built-in names)."""
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise CheckpointError(f"{where}: renames tensor(s) not in the output: {', '.join(unknown[:20])}")
    empty = sorted(old for old, new in mapping.items() if not new.strip())
    if empty:
        raise CheckpointError(f"{where}: renames to an empty name: {', '.join(empty[:20])}")
    renamed = {name: mapping.get(name, name) for name in names}
    by_target: dict[str, list[str]] = {}
    for old, new in renamed.items():
        by_target.setdefault(new, []).append(old)
    shared = {new: olds for new, olds in by_target.items() if len(olds) > 1}
    if shared:
        new, olds = next(iter(sorted(shared.items())))
        raise CheckpointError(f"{where}: the renames make {len(shared)} name(s) shared by several tensors, e.g. "
                              f"{new!r} by {', '.join(sorted(olds))}")
    return renamed


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
    """OLMo-core pads embedding rows up to a multiple of 128 (Bolmo: 520 -> 640)."""
    return -(-vocab_size // multiple) * multiple


@dataclass(frozen=True)
class VocabPadding:
    """Named reversible transform: native rows = `native_rows`, HF rows = `hf_rows` (the tokenizer's).

    To HF drops the padding rows (never produced by the tokenizer; in trained checkpoints they still
    hold their random initial values). To native pads with zeros, which is what the padding rows of
    a freshly converted checkpoint contain."""

    hf_rows: int
    native_rows: int
    name: str = "vocab_padding"

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.hf_rows, *shape[1:])

    def native_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.native_rows, *shape[1:])

    def to_hf(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[: self.hf_rows]

    def to_native(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.new_zeros(self.native_shape(tuple(tensor.shape)))
        out[: self.hf_rows] = tensor
        return out

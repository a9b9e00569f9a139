"""A complete subword OLMo 2 / Olmo 3 language model, with transformers' state-dict names
(`model.embed_tokens`, `model.layers.{i}`, `model.norm`, `lm_head`).

The blocks are the very `OlmoBlockStack` that runs inside Bolmo on patches, so a teacher and the
Bolmo built from it share one implementation; here it runs on token embeddings instead, and the
final norm and a vocabulary-sized head follow it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bolmo.model.counts import Components, parameter_counts
from bolmo.model.inputs import check_inputs
from bolmo.model.transformer import OlmoBlockStack
from bolmo.nn.norm import RMSNorm
from bolmo.nn.onednn import Linear
from bolmo.olmo.config import OlmoConfig


@dataclass
class OlmoOutput:
    logits: torch.Tensor  # [B, T, vocab_size]: logits[:, t] predicts token t+1


class OlmoModel(nn.Module):
    def __init__(self, config: OlmoConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = OlmoBlockStack(config.transformer_spec())
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] (right-padded where attention_mask [B, T] is False) -> normed states [B, T, D]."""
        valid = attention_mask.bool() if attention_mask is not None else None
        return self.norm(self.layers(self.embed_tokens(input_ids), valid))


class OlmoForCausalLM(nn.Module):
    """The subword model with its tokenizer attached by the loader (`model.tokenizer`, a
    `SubwordTokenizer`, or None when the checkpoint directory has no tokenizer.json). What
    `bolmo.load` returns is `bolmo.inference.Olmo`, this class plus score/generate/stream."""

    def __init__(self, config: OlmoConfig) -> None:
        super().__init__()
        self.config = config
        self.model = OlmoModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tokenizer = None

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> OlmoOutput:
        check_inputs(input_ids, self.config.vocab_size, attention_mask=attention_mask)
        return OlmoOutput(logits=self.lm_head(self.model(input_ids.long(), attention_mask)))

    def num_parameters_by_component(self) -> dict[str, int]:
        return parameter_counts(self, _COMPONENTS)


_COMPONENTS: Components = [
    ("token embedding", ("model.embed_tokens.",)),
    ("transformer", ("model.layers.",)),
    ("final norm", ("model.norm.",)),
    ("lm_head", ("lm_head.",)),
]

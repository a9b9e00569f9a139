"""`AutoModelForCausalLM` for Bolmo: a transformers `PreTrainedModel` whose modules are bolmo's.

The model owns the same `model` and `lm_head` modules as `bolmo.model.bolmo.BolmoForCausalLM`
(held as `core`, not registered twice), so its state-dict names are the checkpoint's and every
forward pass is bolmo's. `generate` runs bolmo's cached byte engine (see bolmo.hf.generation).
`save_pretrained` writes a directory that `bolmo.load` reads, and one the released remote code
reads too when the model came from such a directory (its `auto_map` code files are copied along).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from bolmo.config import PLAIN_VOCAB
from bolmo.errors import InputError, TokenizerError
from bolmo.hf.configuration import BolmoHFConfig
from bolmo.model.bolmo import BolmoForCausalLM as CoreBolmoForCausalLM
from bolmo.scoring import folded_logprobs
from bolmo.tokenizer import SUBWORD_TOKENIZER_FILES


@dataclass
class BolmoCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None  # mean next-byte negative log-likelihood over `labels`
    logits: torch.Tensor | None = None  # [B, L, 520]
    boundary_mask: torch.Tensor | None = None  # [B, L] bool
    boundary_logprobs: torch.Tensor | None = None  # [B, L]


class BolmoPreTrainedModel(PreTrainedModel):
    config_class = BolmoHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _supports_cache_class = False

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing to do: bolmo's modules initialise themselves when built, and from_pretrained
        replaces every weight with the checkpoint's."""


class BolmoForCausalLM(BolmoPreTrainedModel, GenerationMixin):
    def __init__(self, config: BolmoHFConfig) -> None:
        super().__init__(config)
        core = CoreBolmoForCausalLM(config.bolmo_config())
        self.model = core.model
        self.lm_head = core.lm_head
        self.__dict__["core"] = core  # shares the modules above; kept out of the module tree
        self.__dict__["source_dir"] = None  # the directory from_pretrained read, if any
        self.post_init()

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any):
        """transformers' loader, then the byte tokenizer (with the subword expansion the model
        needs) from the same directory, as `bolmo.load` attaches it."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        source = _local_directory(str(pretrained_model_name_or_path), kwargs)
        model.__dict__["source_dir"] = source
        model.core.tokenizer = _byte_tokenizer(model.core.config, source)
        return model

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.source_dir is not None:
            _copy_companions(self.source_dir, Path(save_directory), self.config)

    # ------------------------------------------------------------------ forward
    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.local_encoder.byte_embedding

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs: Any) -> BolmoCausalLMOutput | tuple:
        """bolmo's forward pass (`bolmo.model.bolmo.BolmoForCausalLM.forward`); `labels` [B, L]
        (plain ids, -100 ignored) give the mean next-byte loss, boundary choice summed out."""
        unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in _IGNORED_FORWARD_ARGS)
        if unknown:
            raise TypeError(f"BolmoForCausalLM.forward() does not take {', '.join(unknown)}")
        if labels is not None:
            _check_labels(labels, input_ids)
        out = self.core(input_ids, attention_mask=attention_mask)
        loss = None
        if labels is not None:
            targets = labels[:, 1:]
            keep = targets != -100
            logprobs = folded_logprobs(out.logits[:, :-1], targets.clamp(min=0))
            loss = -(logprobs * keep).sum() / keep.sum().clamp(min=1)
        result = BolmoCausalLMOutput(loss, out.logits, out.boundary_mask, out.boundary_logprobs)
        return result if return_dict is not False else result.to_tuple()

    # ------------------------------------------------------------------ generation
    def can_generate(self) -> bool:
        return True

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, streamer=None,
                 **kwargs: Any) -> torch.LongTensor:
        """transformers' `generate` arguments on bolmo's cached byte engine: see bolmo.hf.generation."""
        from bolmo.hf.generation import generate

        return generate(self, inputs, generation_config, streamer, kwargs)


# Arguments transformers passes to every forward that bolmo's model has no use for.
_IGNORED_FORWARD_ARGS = {"use_cache", "past_key_values", "output_attentions", "output_hidden_states",
                         "position_ids", "cache_position", "token_type_ids", "logits_to_keep"}


def _local_directory(name: str, kwargs: dict[str, Any]) -> Path | None:
    """Where from_pretrained found the files: the directory itself, or the Hub snapshot it used."""
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"),
                                      local_files_only=True, allow_patterns=["config.json"]))
    except Exception:  # from_pretrained succeeded, so this only fails for unusual cache settings
        return None


def _byte_tokenizer(config, source: Path | None):
    """bolmo's byte tokenizer for the model, fetching the subword tokenizer from the Hub when it
    is a Hub repo not yet in the local cache (from_pretrained is allowed the network; bolmo.load is not)."""
    from bolmo.loading import build_tokenizer

    try:
        return build_tokenizer(config, source)
    except TokenizerError as exc:
        identifier = config.tokenizer_config.original_identifier
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(identifier, allow_patterns=SUBWORD_TOKENIZER_FILES)
        except Exception:  # offline, not a repo id, or not reachable: the local lookup's message says more
            raise exc from None
        return build_tokenizer(config, source)


def _copy_companions(source: Path, target: Path, config: BolmoHFConfig) -> None:
    """Files a saved model needs besides config and weights: a subword tokenizer kept beside the
    model (config.json names it by a relative path), and the remote code that `auto_map` points at."""
    identifier = config.tokenizer_config.get("original_identifier")
    if identifier and (source / identifier / "tokenizer.json").is_file() and source.resolve() != target.resolve():
        (target / identifier).mkdir(parents=True, exist_ok=True)
        for name in SUBWORD_TOKENIZER_FILES:
            if (source / identifier / name).is_file():
                shutil.copy2(source / identifier / name, target / identifier / name)
    if getattr(config, "auto_map", None):  # the remote code's modules import each other: copy them all
        for file in sorted(source.glob("*.py")):
            if not (target / file.name).exists():
                shutil.copy2(file, target / file.name)


def _check_labels(labels: torch.Tensor, input_ids: torch.Tensor) -> None:
    """labels [B, L] like input_ids, plain ids or -100 (InputError otherwise, not an index error
    from deep in the loss)."""
    if not isinstance(labels, torch.Tensor) or labels.shape != getattr(input_ids, "shape", None):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise InputError(f"labels must be a tensor shaped like input_ids {tuple(getattr(input_ids, 'shape', ()))}, "
                         f"got {shape}")
    bad = labels[(labels != -100) & ((labels < 0) | (labels >= PLAIN_VOCAB))]
    if bad.numel():
        raise InputError(f"labels must be plain ids in [0, {PLAIN_VOCAB}) or -100, got {bad[0].item()} "
                         f"(a fused id >= {PLAIN_VOCAB} names a byte and a boundary: give the byte's id)")

"""Config of a subword OLMo 2 / Olmo 3 model, read from the `config.json` transformers writes for
`Olmo2ForCausalLM` (model_type "olmo2") and `Olmo3ForCausalLM` ("olmo3").

Field names and defaults are transformers' own, so a config.json that omits a field means what it
means to transformers. Model fields we do not know are refused by name (they could change the
math); the generic `PretrainedConfig` bookkeeping keys transformers may write (generation
defaults, label maps, ...) are accepted and ignored, since they do not change the weights' meaning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bolmo.config import _HF_BOOKKEEPING, TransformerConfig, default_layer_types, read_json, require
from bolmo.errors import ConfigError

OLMO_MODEL_TYPES = ("olmo2", "olmo3")

# Attributes every transformers PretrainedConfig carries; none changes an OLMo model's weights.
PRETRAINED_CONFIG_KEYS = _HF_BOOKKEEPING | {
    "_attn_implementation_autoset", "add_cross_attention", "bad_words_ids", "begin_suppress_tokens",
    "chunk_size_feed_forward", "cross_attention_hidden_size", "decoder_start_token_id",
    "diversity_penalty", "do_sample", "early_stopping", "encoder_no_repeat_ngram_size",
    "exponential_decay_length_penalty", "finetuning_task", "forced_bos_token_id", "forced_eos_token_id",
    "id2label", "is_decoder", "is_encoder_decoder", "label2id", "length_penalty", "max_length",
    "min_length", "no_repeat_ngram_size", "num_beam_groups", "num_beams", "num_return_sequences",
    "output_attentions", "output_hidden_states", "output_scores", "prefix", "problem_type",
    "pruned_heads", "remove_invalid_values", "repetition_penalty", "return_dict",
    "return_dict_in_generate", "sep_token_id", "suppress_tokens", "task_specific_params", "temperature",
    "tf_legacy_loss", "tie_encoder_decoder", "tokenizer_class", "top_k", "top_p", "torchscript",
    "typical_p", "use_bfloat16",
}
# Olmo 3 adds sliding-window layers; OLMo 2 has full attention everywhere.
_OLMO3_ONLY = ("sliding_window", "layer_types")
_LAYER_TYPES = ("full_attention", "sliding_attention")


def legacy_rope_fields(data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` with transformers 5's `rope_parameters` rewritten as the 4.x `rope_theta` + `rope_scaling`.

    transformers 5 (and OLMo-core 3.0's HF export) writes one `rope_parameters` object for OLMo 2
    (`{rope_theta, rope_type, ...scaling fields}`) and one per layer type for Olmo 3. Sliding layers use
    plain RoPE with the full layers' theta here (as in every released Olmo 3), so anything else is refused."""
    params = data.get("rope_parameters")
    if params is None:
        return data
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{where}: rope_parameters: expected a non-empty object, got {params!r}")
    field_name = "rope_parameters"
    if set(params) <= set(_LAYER_TYPES):  # per layer type
        for name, value in params.items():
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: rope_parameters.{name}: expected an object, got {value!r}")
        full, sliding = params.get("full_attention", {}), params.get("sliding_attention", {})
        if sliding.get("rope_type", "default") != "default" or set(sliding) - {"rope_type", "rope_theta"}:
            raise ConfigError(f"{where}: rope_parameters.sliding_attention: only plain RoPE is supported on "
                              f"sliding layers, got {sliding}")
        thetas = {p["rope_theta"] for p in (full, sliding) if "rope_theta" in p}
        if len(thetas) > 1:
            raise ConfigError(f"{where}: rope_parameters: different rope_theta for full and sliding layers "
                              f"{sorted(thetas)} are not supported")
        params = {**({"rope_theta": thetas.pop()} if thetas else {}), **full}
        field_name = "rope_parameters.full_attention"
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    legacy = {"rope_theta": params.get("rope_theta", data.get("rope_theta")),
              "rope_scaling": None if scaling in ({}, {"rope_type": "default"}) else scaling}
    for key, value in legacy.items():
        if data.get(key) is not None and data[key] != value:
            raise ConfigError(f"{where}: {key} {data[key]!r} disagrees with {field_name} ({value!r}); give one of them")
    out = {k: v for k, v in data.items() if k != "rope_parameters"}
    out.update({k: v for k, v in legacy.items() if v is not None})
    return out


@dataclass
class OlmoConfig(TransformerConfig):
    """transformers' Olmo2Config / Olmo3Config, field for field (defaults as transformers has them).
    `sliding_window` and `layer_types` are Olmo 3 only (there: 4096, and 3 sliding then 1 full)."""

    model_type: str = "olmo2"
    vocab_size: int = 50304
    pad_token_id: int | None = 1
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 50279

    def __post_init__(self) -> None:
        if self.model_type not in OLMO_MODEL_TYPES:
            raise ConfigError(f"model_type {self.model_type!r} is not a subword OLMo model ({', '.join(OLMO_MODEL_TYPES)})")
        super().__post_init__()
        if self.model_type == "olmo3":
            if self.sliding_window is None:
                self.sliding_window = 4096
            if self.layer_types is None:
                self.layer_types = default_layer_types(self.num_hidden_layers)

    def validate(self, where: str) -> None:
        """Reject values our transformer cannot honour, naming the field."""
        require(type(self.vocab_size) is int and self.vocab_size > 0, where, "vocab_size",
                f"must be a positive integer, got {self.vocab_size!r}")
        self.validate_transformer(where)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """`eos_token_id` may be one id, a list of ids, or null."""
        if self.eos_token_id is None:
            return ()
        return tuple(self.eos_token_id) if isinstance(self.eos_token_id, list) else (self.eos_token_id,)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config.json") -> "OlmoConfig":
        model_type = data.get("model_type")
        if model_type not in OLMO_MODEL_TYPES:
            raise ConfigError(f"{where}: model_type is {model_type!r}, expected one of {', '.join(OLMO_MODEL_TYPES)}")
        data = legacy_rope_fields(data, where)
        known = {f.name for f in dataclasses.fields(cls)} - (set(_OLMO3_ONLY) if model_type == "olmo2" else set())
        unknown = sorted(set(data) - known - PRETRAINED_CONFIG_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) for model_type {model_type!r}: {unknown}")
        body = {k: v for k, v in data.items() if k in known}
        try:
            config = cls(**body)
            config.validate(where)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # a field of the wrong type
            raise ConfigError(f"{where}: {exc}") from exc
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> "OlmoConfig":
        return cls.from_dict(read_json(path), where=str(path))

    def to_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """transformers' config.json (the one writer of OLMo HF configs: trainer exports and
        OLMo-core -> HF conversion). Optional fields that are unset are left out, so transformers
        applies its own defaults; the end-of-text and padding ids are written even when null."""
        arch = "Olmo3ForCausalLM" if self.model_type == "olmo3" else "Olmo2ForCausalLM"
        fields = {k: v for k, v in dataclasses.asdict(self).items()
                  if v is not None or k in ("eos_token_id", "pad_token_id", "rope_scaling")}
        return dict(sorted({"architectures": [arch], **fields, "dtype": dtype}.items()))

"""Configs as dataclasses, read from and written to the released HF `config.json` field for field.

`BolmoConfig` mirrors the released Bolmo config (every field the Bolmo-1B/7B `config.json` files
carry). `TransformerSpec` is the part the global OLMo transformer needs; subword OLMo 2 / Olmo 3
models build the same spec from their own configs, so one transformer implementation serves both.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bolmo.errors import ConfigError, warn

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<bpe_token_end>")
PAD_ID, BOS_ID, BPE_TOKEN_END_ID = (SPECIAL_TOKENS.index(t) for t in ("<pad>", "<bos>", "<bpe_token_end>"))  # 0, 1, 3
EOS_ID = BOS_ID  # the released models end documents with <bos> (id 1), not <eos> (a deliberate upstream quirk)
BYTE_OFFSET = len(SPECIAL_TOKENS)  # byte b has id b + 4
PLAIN_VOCAB = BYTE_OFFSET + 256  # 260: ids >= 260 are the fused "patch ends here" twins
FUSED_VOCAB = 2 * PLAIN_VOCAB  # 520

# Keys HF writes into every config.json that carry no model information.
_HF_BOOKKEEPING = {
    "architectures",
    "auto_map",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "_name_or_path",
}

ROPE_TYPES = ("default", "linear", "yarn")
# How messages name a JSON type (config_maps reads OLMo-core configs with the same words).
KIND_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "true or false", int: "an integer",
              float: "a number", type(None): "null"}


@dataclass
class ByteTokenizerConfig:
    """The byte tokenizer (`tokenizer_config` in config.json)."""

    vocab_size: int = FUSED_VOCAB
    bos_token_id: int = BOS_ID
    pad_token_id: int = PAD_ID
    eos_token_id: int = EOS_ID
    bpe_token_end_id: int = BPE_TOKEN_END_ID
    special_tokens: list[str] = field(default_factory=lambda: list(SPECIAL_TOKENS))
    special_tokens_first: bool = True
    original_identifier: str | None = "allenai/dolma2-tokenizer"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "tokenizer_config") -> "ByteTokenizerConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected an object, got {data!r}")
        cfg = _from_dict(cls, data, where)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "tokenizer_config") -> None:
        """Types, the one supported special-token layout, and ids inside the vocabulary (an id
        past it would only fail at generation time, as an IndexError inside torch)."""
        check_fields(self, where)
        if list(self.special_tokens) != list(SPECIAL_TOKENS) or not self.special_tokens_first:
            raise ConfigError(
                f"{where}.special_tokens: only {list(SPECIAL_TOKENS)} (special tokens first) is "
                f"supported, got {self.special_tokens}"
            )
        if self.vocab_size != FUSED_VOCAB:
            raise ConfigError(f"{where}.vocab_size: must be {FUSED_VOCAB}, got {self.vocab_size}")
        for name in ("bos_token_id", "pad_token_id", "eos_token_id", "bpe_token_end_id"):
            check_token_id(getattr(self, name), self.vocab_size, where, name)


@dataclass(frozen=True)
class RopeSpec:
    """RoPE settings of one attention layer (sliding layers always use plain RoPE)."""

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    truncate: bool = True
    mscale: float | None = None  # YaRN's DeepSeek variant: used only with mscale_all_dim, without attention_factor
    mscale_all_dim: float | None = None

    def yarn_attention_factor(self) -> float:
        """The attention scaling YaRN applies to cos and sin, resolved as transformers does."""
        if self.attention_factor is not None:
            return self.attention_factor
        if self.mscale and self.mscale_all_dim:  # both set and non-zero
            return yarn_mscale(self.factor, self.mscale) / yarn_mscale(self.factor, self.mscale_all_dim)
        return yarn_mscale(self.factor)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention scaling for a context extension by `factor`."""
    return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1 else 1.0


@dataclass(frozen=True)
class TransformerSpec:
    """What an OLMo 2 / Olmo 3 block stack needs, whichever config it came from."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    layer_types: tuple[str, ...]
    sliding_window: int | None
    rope_full: RopeSpec
    rope_sliding: RopeSpec

    def window(self, layer: int) -> int | None:
        """Keys visible to a query in `layer` (including itself), or None for full attention."""
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None

    def rope(self, layer: int) -> RopeSpec:
        return self.rope_sliding if self.layer_types[layer] == "sliding_attention" else self.rope_full


def parse_rope_scaling(
    rope_scaling: dict[str, Any] | None, theta: float, max_position_embeddings: int, where: str
) -> RopeSpec:
    """Validate an HF `rope_scaling` dict into a RopeSpec (None -> plain RoPE)."""
    if rope_scaling is None:
        return RopeSpec(theta=theta)
    if not isinstance(rope_scaling, dict):
        raise ConfigError(f"{where}.rope_scaling: expected an object or null, got {rope_scaling!r}")
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if rope_type is None:
        raise ConfigError(f"{where}.rope_scaling: names no rope_type (or type); use null for plain RoPE")
    if rope_type not in ROPE_TYPES:
        raise ConfigError(
            f"{where}.rope_scaling.rope_type: unsupported {rope_type!r} (supported: {', '.join(ROPE_TYPES)})"
        )
    known = {"rope_type", "type", "factor", "original_max_position_embeddings", "beta_fast",
             "beta_slow", "attention_factor", "truncate", "mscale", "mscale_all_dim"}
    unknown = sorted(set(rope_scaling) - known)
    if unknown:
        raise ConfigError(f"{where}.rope_scaling: unknown field(s) {unknown}")

    def number(key: str, default: float | None) -> float | None:
        value = rope_scaling.get(key)
        if value is None:
            return default
        require(_matches(value, float), where, f"rope_scaling.{key}", f"expected a number, got {value!r}")
        return float(value)

    factor = number("factor", 1.0)
    if rope_type != "default" and factor <= 0:
        raise ConfigError(f"{where}.rope_scaling.factor: must be positive, got {factor}")
    original = rope_scaling.get("original_max_position_embeddings")
    require(original is None or (type(original) is int and original > 0), where,
            "rope_scaling.original_max_position_embeddings", f"must be a positive integer, got {original!r}")
    truncate = rope_scaling.get("truncate", True)
    require(type(truncate) is bool, where, "rope_scaling.truncate", f"expected true or false, got {truncate!r}")
    return RopeSpec(
        theta=theta,
        rope_type=rope_type,
        factor=factor,
        original_max_position_embeddings=original if original is not None else max_position_embeddings,
        beta_fast=number("beta_fast", None) or 32.0,
        beta_slow=number("beta_slow", None) or 1.0,
        attention_factor=number("attention_factor", None),
        truncate=truncate,
        mscale=number("mscale", None),
        mscale_all_dim=number("mscale_all_dim", None),
    )


def transformer_spec_from_hf(config: Any, layer_types: list[str], where: str = "config.json") -> TransformerSpec:
    """The TransformerSpec of any HF-style config with OLMo field names (Bolmo, Olmo2, Olmo3).
    Sliding layers always use plain RoPE; `rope_scaling` applies to full-attention layers."""
    return TransformerSpec(
        d_model=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        head_dim=config.head_dim or config.hidden_size // config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        rms_norm_eps=config.rms_norm_eps,
        layer_types=tuple(layer_types),
        sliding_window=config.sliding_window,
        rope_full=parse_rope_scaling(config.rope_scaling, config.rope_theta, config.max_position_embeddings, where),
        rope_sliding=RopeSpec(theta=config.rope_theta),
    )


def require(cond: bool, where: str, fld: str, msg: str) -> None:
    """Raise ConfigError naming the file and the field unless `cond`."""
    if not cond:
        raise ConfigError(f"{where}: {fld}: {msg}")


def check_fields(config: Any, where: str, minimums: dict[str, int] | None = None) -> None:
    """Every field of a config dataclass holds its declared JSON type, and each field in
    `minimums` an integer at least that large: a string where a number belongs would fail deep in
    torch, and "yes" where a boolean belongs would pass as true."""
    minimums = minimums or {}
    hints = _field_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        if f.name in minimums and not (value is None and _matches(None, hint)):
            low = minimums[f.name]
            require(type(value) is int and value >= low, where, f.name,
                    f"must be {'a positive integer' if low == 1 else f'an integer >= {low}'}, got {value!r}")
        else:
            require(_matches(value, hint), where, f.name, f"expected {_describe(hint)}, got {value!r}")


def check_token_id(value: int | None, vocab_size: int, where: str, name: str) -> None:
    """A token id (None: unset) must name an entry of the vocabulary."""
    require(value is None or (type(value) is int and 0 <= value < vocab_size), where, name,
            f"must be a token id in [0, {vocab_size}), got {value!r}")


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field annotation (bool is not an int; a float must be finite)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is Any:
        return True
    if hint is float:
        return type(value) in (int, float) and math.isfinite(value)
    if hint in (int, bool, type(None)):
        return type(value) is hint
    if origin is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value)
    return isinstance(value, origin or hint)


def _describe(hint: Any) -> str:
    """'an integer or null' for `int | None`: the words a message uses for a field's type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).split(' ', 1)[1]}s"
    return KIND_NAMES.get(typing.get_origin(hint) or hint, "an object")


def default_layer_types(n_layers: int) -> list[str]:
    """HF default: three sliding layers then one full, repeating."""
    return ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(n_layers)]


def validate_layer_types(layer_types: list[str], n_layers: int, sliding_window: int | None, where: str) -> None:
    if len(layer_types) != n_layers:
        raise ConfigError(f"{where}.layer_types: {len(layer_types)} entries for {n_layers} layers")
    bad = sorted({t for t in layer_types if t not in ("sliding_attention", "full_attention")})
    if bad:
        raise ConfigError(f"{where}.layer_types: unsupported layer type(s) {bad}")
    if "sliding_attention" in layer_types and (sliding_window is None or sliding_window < 1):
        raise ConfigError(f"{where}.sliding_window: must be a positive integer for sliding layers")


@dataclass
class TransformerConfig:
    """The HF config.json fields of an OLMo 2 / Olmo 3 style transformer, named and defaulted as
    transformers has them: declared, checked and turned into a TransformerSpec once, for
    BolmoConfig (its global transformer) and OlmoConfig (the subword models) alike."""

    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    rms_norm_eps: float = 1e-5
    sliding_window: int | None = None
    layer_types: list[str] | None = None  # None: every layer full attention (OLMo 2)

    @property
    def context_positions(self) -> int | None:
        """The positions prompts and scoring windows must fit, or None where the checkpoint does
        not say (OLMo-core's HF export writes max_position_embeddings = -1 for subword models)."""
        return self.max_position_embeddings if self.max_position_embeddings > 0 else None

    # Integer fields and their least sensible value (checked with the types by `check_fields`).
    MINIMUMS: ClassVar[dict[str, int]] = {
        "hidden_size": 1, "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1,
        "num_key_value_heads": 1, "head_dim": 1,
    }

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads

    def validate_transformer(self, where: str) -> None:
        """What our transformer implements (SwiGLU, bias-free attention, untied head, grouped-query
        heads); raises ConfigError naming the file and the field."""
        check_fields(self, where, self.MINIMUMS)
        require(self.hidden_act == "silu", where, "hidden_act", f"only 'silu' is supported, got {self.hidden_act!r}")
        require(not self.attention_bias, where, "attention_bias", "biased attention projections are not supported")
        require(not self.tie_word_embeddings, where, "tie_word_embeddings", "tied embeddings are not supported")
        if self.head_dim is None:  # the heads first: a bad head count is named as such, not as a kv-head problem
            require(self.hidden_size % self.num_attention_heads == 0, where, "num_attention_heads",
                    f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")
        require(self.num_attention_heads % self.num_key_value_heads == 0, where, "num_key_value_heads",
                f"{self.num_attention_heads} heads are not a multiple of {self.num_key_value_heads} kv heads")
        require(self.rms_norm_eps > 0, where, "rms_norm_eps", "must be positive")
        require(self.rope_theta > 0, where, "rope_theta", f"must be positive, got {self.rope_theta!r}")
        if self.layer_types is not None:
            validate_layer_types(self.layer_types, self.num_hidden_layers, self.sliding_window, where)
        self.transformer_spec(where)  # validates rope_scaling

    def transformer_spec(self, where: str = "config.json") -> TransformerSpec:
        layer_types = self.layer_types or ["full_attention"] * self.num_hidden_layers
        return transformer_spec_from_hf(self, layer_types, where)


@dataclass
class BolmoConfig(TransformerConfig):
    """The released Bolmo `config.json` (model_type "bolmo"), every field by its HF name."""

    vocab_size: int = FUSED_VOCAB
    pad_token_id: int = PAD_ID
    bos_token_id: int | None = BOS_ID
    eos_token_id: int | None = EOS_ID
    sliding_window: int | None = 4096
    add_expanded_embeddings: bool = True
    boundary_predictor_lookahead: int = 1
    boundary_threshold: str = "sample:0"
    num_local_encoder_layers: int = 1
    num_local_decoder_layers: int = 4
    num_local_heads: int = 16
    local_intermediate_size: int = 5504
    local_rms_norm_eps: float = 1e-5
    subword_vocab_size: int = 100278
    tokenizer_config: ByteTokenizerConfig = field(default_factory=ByteTokenizerConfig)

    # max_position_embeddings: the start id and at least one byte (scoring windows hold positions - 1 bytes).
    MINIMUMS: ClassVar[dict[str, int]] = TransformerConfig.MINIMUMS | {
        "num_local_heads": 1, "local_intermediate_size": 1, "subword_vocab_size": 1, "max_position_embeddings": 2,
        "num_local_encoder_layers": 0, "num_local_decoder_layers": 0, "boundary_predictor_lookahead": 0,
        "sliding_window": 1,
    }

    def __post_init__(self) -> None:
        if isinstance(self.tokenizer_config, dict):
            self.tokenizer_config = ByteTokenizerConfig.from_dict(self.tokenizer_config)
        check_fields(self, _CONFIG_SOURCE.get(), self.MINIMUMS)  # before the defaults below compute with them
        super().__post_init__()
        if self.layer_types is None:
            self.layer_types = default_layer_types(self.num_hidden_layers)
        self.validate(_CONFIG_SOURCE.get())

    # ------------------------------------------------------------------ validation
    def validate(self, where: str = "config.json") -> None:
        """Reject values the model cannot honour, naming the field."""
        self.validate_transformer(where)  # types and minimums of every field (MINIMUMS), then the transformer
        require(self.vocab_size == FUSED_VOCAB, where, "vocab_size", f"must be {FUSED_VOCAB}, got {self.vocab_size}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            check_token_id(getattr(self, name), self.vocab_size, where, name)
        self.tokenizer_config.validate(f"{where}: tokenizer_config")
        require(self.hidden_size % (2 * self.num_local_heads) == 0, where, "num_local_heads",
                f"hidden_size {self.hidden_size} must be divisible by 2 * num_local_heads")
        require(self.local_rms_norm_eps > 0, where, "local_rms_norm_eps", "must be positive")
        parse_boundary_threshold(self.boundary_threshold, where)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config.json") -> "BolmoConfig":
        model_type = data.get("model_type", "bolmo")
        if model_type != "bolmo":
            raise ConfigError(f"{where}: model_type is {model_type!r}, expected 'bolmo'")
        body = {k: v for k, v in data.items() if k not in _HF_BOOKKEEPING}
        if "tokenizer_config" in body and isinstance(body["tokenizer_config"], dict):
            body["tokenizer_config"] = ByteTokenizerConfig.from_dict(body["tokenizer_config"], f"{where}: tokenizer_config")
        token = _CONFIG_SOURCE.set(where)  # so __post_init__'s validation names the real file
        try:
            return _from_dict(cls, body, where)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # a field of the wrong type deep in validation
            raise ConfigError(f"{where}: {exc}") from exc
        finally:
            _CONFIG_SOURCE.reset(token)

    @classmethod
    def from_file(cls, path: str | Path) -> "BolmoConfig":
        return cls.from_dict(read_json(path), where=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The HF config.json content, including the bookkeeping keys transformers expects."""
        out: dict[str, Any] = {
            "architectures": ["BolmoForCausalLM"],
            "model_type": "bolmo",
        }
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "head_dim" and value is None:
                continue
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        out["dtype"] = "float32"
        return dict(sorted(out.items()))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str) -> "BolmoConfig":
        try:
            return cls(**PRESETS[name])
        except KeyError:
            raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None


@dataclass(frozen=True)
class BoundaryThreshold:
    """A parsed `boundary_threshold`: mode in {"sample", "topk", "topk_percent"} and its value."""

    mode: str
    value: float


def parse_boundary_threshold(text: str, where: str = "config.json") -> BoundaryThreshold:
    mode, sep, raw = str(text).partition(":")
    try:
        value = float(raw) if sep else math.nan
    except ValueError:
        value = math.nan
    ok = (
        (mode == "sample" and value in (0.0, 1.0))
        or (mode == "topk" and value >= 0 and value == int(value))
        or (mode == "topk_percent" and 0.0 <= value <= 1.0)
    )
    if not ok:
        raise ConfigError(
            f"{where}: boundary_threshold: unsupported {text!r} "
            "(expected 'sample:0', 'sample:1', 'topk:N' or 'topk_percent:F' with 0 <= F <= 1)"
        )
    return BoundaryThreshold(mode, value)


# The file a config is being read from, for error messages raised while it is constructed.
_CONFIG_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("config_source", default="config.json")


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}")
    return cls(**data)


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data


_LOCAL_7B = dict(num_local_encoder_layers=1, num_local_decoder_layers=4, num_local_heads=16)
PRESETS: dict[str, dict[str, Any]] = {
    "bolmo-1b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, layer_types=["full_attention"] * 16, rms_norm_eps=1e-6,
        local_rms_norm_eps=1e-5, local_intermediate_size=2816, rope_theta=500000.0,
        max_position_embeddings=65536, sliding_window=4096, **_LOCAL_7B,
    ),
    "bolmo-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, layer_types=default_layer_types(32), sliding_window=4096,
        rms_norm_eps=1e-6, local_rms_norm_eps=1e-5, local_intermediate_size=5504,
        rope_theta=500000.0, max_position_embeddings=65536,
        rope_scaling={"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192,
                      "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.2079441541679836},
        **_LOCAL_7B,
    ),
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, layer_types=["sliding_attention", "full_attention"], sliding_window=8,
        rms_norm_eps=1e-5, local_rms_norm_eps=1e-5, local_intermediate_size=96, num_local_heads=4,
        num_local_encoder_layers=1, num_local_decoder_layers=2, rope_theta=10000.0,
        max_position_embeddings=512, subword_vocab_size=1000,
    ),
}


# Generation defaults shared by bolmo.generation, the model classes' generate / stream and
# `bolmo generate` (here, torch-free, so the CLI reads them without importing torch).
DEFAULT_MAX_NEW_BYTES = 256
GREEDY = 0.0  # temperature 0: argmax


@dataclass
class ByteifyOptions:
    """bolmo.byteify's sizes of the new local parts and init choices (released models: 1 encoder layer, 4
    decoder layers, 16 heads, local MLP 2816 for d 2048 and 5504 for d 4096)."""

    local_d_model: int | None = None  # must equal the teacher's hidden_size when given
    encoder_layers: int = 1
    decoder_layers: int = 4
    local_heads: int | None = None  # default: the largest of 16, 8, 4, 2, 1 that divides d / 2
    local_intermediate_size: int | None = None  # default: 4 d / 3 rounded up to a multiple of 128
    subword_tokenizer: str | None = None  # tokenizer directory (default: the teacher's directory)
    seed: int = 0
    final_norm: str = "ones"  # the reference code; or "teacher" (the teacher's final norm)
    out_projection_scaling: str = "column"  # or "row"

    def __post_init__(self) -> None:
        """Sizes must be positive: 0 used to mean "the default" for some and an empty stack for others."""
        for flag, value in (("--encoder-layers", self.encoder_layers), ("--decoder-layers", self.decoder_layers),
                            ("--local-heads", self.local_heads),
                            ("--local-intermediate-size", self.local_intermediate_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{flag} must be an integer >= 1, got {value!r}")


ENV_TRUE = ("1", "true", "yes", "on")
ENV_FALSE = ("0", "false", "no", "off")


def env_switch(name: str, default: bool) -> bool:
    """A yes/no environment variable (BOLMO_COMPILE, BOLMO_ONEDNN, BOLMO_KEEP_FREED_MEMORY), read
    the same way everywhere: 1/true/yes/on or 0/false/no/off in any case; unset or empty gives
    `default`, and any other value gives `default` with a warning naming the variable."""
    value = os.environ.get(name, "")
    word = value.strip().lower()
    if not word:
        return default
    if word in ENV_TRUE or word in ENV_FALSE:
        return word in ENV_TRUE
    warn(f"{name}={value!r} is not one of 1/true/yes/on or 0/false/no/off; using {int(default)}")
    return default

"""OLMo-core experiment config <-> HF config.json, for OLMo 2 / Olmo 3 and Bolmo.

OLMo-core configs come in two namings: 3.0 (`block.sequence_mixer`, `feed_forward.activation`,
the OLMo 2/3 fixtures) and the 2025 one of bolmo-core, which wrote the released Bolmo checkpoints
(`block.attention`, `feed_forward.act_name`). Both are read; Bolmo is written in the 2025 naming
(bolmo-core is the only code that builds Bolmo from an OLMo-core config), OLMo 2/3 in 3.0 naming.

Some HF fields have no OLMo-core counterpart and do not change the model's math
(max_position_embeddings, use_cache, token ids without a tokenizer, ...). HF -> OLMo-core keeps
them under a top-level `hf_overrides` key so that HF -> OLMo-core -> HF gives back the same
config.json; OLMo-core ignores top-level keys it does not use. Fields that would change the math
and that OLMo-core cannot express are refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bolmo.checkpoint.keymaps import padded_vocab_size
from bolmo.config import (
    KIND_NAMES,
    BolmoConfig,
    ByteTokenizerConfig,
    RopeSpec,
    TransformerSpec,
    parse_rope_scaling,
    yarn_mscale,
)
from bolmo.errors import ConfigError, warn
from bolmo.olmo.config import PRETRAINED_CONFIG_KEYS, OlmoConfig, legacy_rope_fields

_OC = "olmo_core.nn."
# Fields that OLMo-core keeps elsewhere or not at all and that do not change the weights' meaning.
_HF_ONLY = {"max_position_embeddings", "use_cache", "attention_dropout", "transformers_version",
            "boundary_threshold", "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id",
            "sliding_window", "architectures", "auto_map", "_name_or_path", "torch_dtype", "dtype"}
# Local-model settings of the HF Bolmo architecture; any other value is a different model.
_ENCODER_FIXED = {"sliding_window_size": 0, "cross_attn_n_heads": 0, "pooling": "hnet",
                  "add_hash_embeddings": False, "add_norm_after_last_block": True,
                  "add_norm_after_pool": False, "add_out_projection": True, "boundary_predictor": "hnet",
                  "represent_bytes_with_embeddings": False, "represent_bytes_with_last_mixed_out": False,
                  "blt_compat": False}
_DECODER_FIXED = {"sliding_window_size": 0, "cross_attn_n_heads": 0, "depooling": "hnet",
                  "add_norm_before_first_block": True, "add_norm_onto_residual": False,
                  "add_in_projection": True, "add_projected_patch_residuals": False, "hnet_smooth": False,
                  "hnet_smooth_ste": False, "hnet_modulate": False, "blt_compat": False, "fuse_boundaries": True,
                  "no_boundaries": False}
# Global-block settings with one implemented value (None: the writer left them unset); any other
# value changes what the model computes, so it is refused rather than ignored.
_BLOCK_FIXED = {"scalable_softmax": (False, None), "attention_sinks": (False, None, 0),
                "partial_rotary_factor": (1.0, None), "no_global_rope": (False, None)}
# Every field name a model config may hold: what the readers below use, the settings fixed above,
# and what OLMo-core writes that does not change the computation (initialisation, kernels, class
# names, training-only switches). Any other name is reported, not silently dropped.
_KNOWN_MODEL_FIELDS = {
    "_CLASS_", "name", "type", "dtype", "d_model", "vocab_size", "n_layers", "block", "block_config",
    "sequence_mixer", "attention", "n_heads", "n_kv_heads", "head_dim", "bias", "rope", "theta", "scaling",
    "factor", "beta_fast", "beta_slow", "old_context_len", "qk_norm", "use_head_qk_norm", "eps",
    "layer_norm", "feed_forward", "hidden_size", "activation", "act_name", "sliding_window", "pattern",
    "force_full_attention_on_first_layer", "force_full_attention_on_last_layer", "lm_head",
    "tie_word_embeddings", "local_encoder", "local_decoder", "xlstm", "num_heads",
    "add_expanded_embeddings", "boundary_predictor_lookahead", "subword_vocab_size",
    "init_method", "init_seed", "init_std", "backend", "full_precision", "loss_implementation",
    "cross_attn_do_project", "cross_attn_init_pooling", "share_blocks_between_teacher_and_student",
} | set(_ENCODER_FIXED) | set(_DECODER_FIXED) | set(_BLOCK_FIXED)
LOCAL_RMS_NORM_EPS = 1e-5  # bolmo-core builds post_last_block_norm / initial_norm with nn.RMSNorm's default


# ---------------------------------------------------------------------------------- OLMo-core side
_REQUIRED = object()
_NUMBER = (int, float)
# max_position_embeddings of the released Bolmo-1B and Bolmo-7B config.json: the context a Bolmo gets
# when its OLMo-core config says nothing about one (see `context_length`).
RELEASED_BOLMO_CONTEXT = 65536
# What OLMo-core's own HF export writes for a subword model when it is not told a context length.
OLMO_CORE_UNKNOWN_CONTEXT = -1


@dataclass(frozen=True)
class _Obj:
    """One JSON object of a config, read with type-checked field access, so that a malformed config (a
    string where an object belongs, a missing field) is a ConfigError naming the file and the field
    path instead of an AttributeError or KeyError."""

    data: dict[str, Any]
    path: str  # e.g. "model.block"; "" for the top level
    where: str  # the file

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
        """`data[key]` checked to be of `kind`; null or absent gives `default` (or an error if required)."""
        value = self.data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise ConfigError(f"{self.where}: missing field {self.field(key)}")
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join(KIND_NAMES[k] for k in kinds)
            raise ConfigError(f"{self.where}: {self.field(key)}: expected {expected}, got {value!r}")
        return value

    def size(self, key: str) -> int:
        """A required positive integer (a dimension or a count), so later arithmetic cannot fail."""
        value = self.get(key, int)
        if value <= 0:
            raise ConfigError(f"{self.where}: {self.field(key)}: must be a positive integer, got {value}")
        return value

    def obj(self, key: str, required: bool = True) -> "_Obj":
        """The object at `key`; an absent optional one reads as empty."""
        return _Obj(self.get(key, dict, _REQUIRED if required else {}), self.field(key), self.where)


def _model_obj(config: dict[str, Any], where: str) -> _Obj:
    return _Obj(config, "", where).obj("model")


def model_family(config: dict[str, Any], where: str) -> str:
    """'bolmo' or 'olmo' for an OLMo-core experiment config; refuses other architectures."""
    name = _model_obj(config, where).get("name", str, "default")
    if name == "bolmo":
        return "bolmo"
    if name != "default":
        raise ConfigError(f"{where}: model.name {name!r} is not supported (supported: default (OLMo 2/3), bolmo)")
    return "olmo"


def read_global(model: _Obj) -> tuple[dict[str, Any], str]:
    """The global transformer of an OLMo-core model config (either naming) as the HF config fields
    that describe it (`hidden_size`, `layer_types`, `rope_scaling`, ...), and the model's dtype. The
    HF config classes then hold it, and their `transformer_spec()` is the one description of it."""
    where = model.where
    block = model.obj("block")
    if block.get("name", str, None) != "reordered_norm":
        raise ConfigError(f"{where}: model.block.name {block.data.get('name')!r} is not supported "
                          "(OLMo 2 / Olmo 3 use 'reordered_norm')")
    attn = block.obj("sequence_mixer" if "sequence_mixer" in block.data else "attention")
    if attn.get("type", str, "attention") != "attention" or attn.get("name", str, "default") != "default":
        raise ConfigError(f"{where}: {attn.path}: only default attention is supported")
    if attn.get("use_head_qk_norm", bool, False):
        raise ConfigError(f"{where}: {attn.path}.use_head_qk_norm=true has no HF equivalent")
    if not attn.data.get("qk_norm"):
        raise ConfigError(f"{where}: {attn.path}.qk_norm is missing (OLMo 2 / Olmo 3 have QK-norm)")
    norm, qk_norm = block.obj("layer_norm"), attn.obj("qk_norm")
    lm_head = model.obj("lm_head")
    head_norm = lm_head.obj("layer_norm") if lm_head.data.get("layer_norm") else norm
    norms = (norm, qk_norm, head_norm)
    eps_values = {n.get("eps", _NUMBER, 1e-5) for n in norms}
    if len(eps_values) != 1 or any(n.get("name", str, "rms") != "rms" for n in norms):
        raise ConfigError(f"{where}: block, QK and head norms must all be RMSNorm with one eps, got {eps_values}")
    ff = block.obj("feed_forward")
    if ff.get("bias", bool, False) or ff.get("name", str, "default") != "default":
        raise ConfigError(f"{where}: model.block.feed_forward: only the default bias-free SwiGLU is supported")
    if model.get("tie_word_embeddings", bool, False):
        raise ConfigError(f"{where}: model.tie_word_embeddings=true is not supported")
    d_model, n_heads, n_layers = model.size("d_model"), attn.size("n_heads"), model.size("n_layers")
    rope = attn.obj("rope", required=False)
    if rope.get("name", str, "default") not in ("default", "fused"):
        raise ConfigError(f"{where}: {rope.path}.name {rope.data.get('name')!r} is not supported")
    windows = _windows(attn.obj("sliding_window", required=False), n_layers)
    sliding = sorted({w for w in windows if w is not None})
    if len(sliding) > 1:
        raise ConfigError(f"{where}: sliding windows of different sizes {sliding} have no HF equivalent")
    head_dim = attn.get("head_dim", int, d_model // n_heads)
    fields = {
        "vocab_size": model.size("vocab_size"), "hidden_size": d_model, "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads, "num_key_value_heads": attn.get("n_kv_heads", int, n_heads),
        "head_dim": None if head_dim == d_model // n_heads else head_dim,
        "intermediate_size": ff.size("hidden_size"), "rms_norm_eps": eps_values.pop(),
        "rope_theta": rope.get("theta", _NUMBER, 500_000),
        "rope_scaling": _scaling_to_hf(rope.obj("scaling", required=False)),
        "layer_types": ["full_attention" if w is None else "sliding_attention" for w in windows],
        # OLMo-core's pattern value is the HF window (query included)
        "sliding_window": sliding[0] if sliding else None,
        "attention_bias": attn.get("bias", bool, False),
        "hidden_act": ff.get("activation", str, ff.get("act_name", str, "silu")),
        "initializer_range": model.get("init_std", _NUMBER, 0.02),
    }
    return fields, model.get("dtype", str, "float32")


def _windows(sliding: _Obj, n_layers: int) -> list[int | None]:
    if not sliding.data:
        return [None] * n_layers
    pattern = sliding.get("pattern", list)
    if not pattern or not all(isinstance(w, int) and not isinstance(w, bool) for w in pattern):
        raise ConfigError(f"{sliding.where}: {sliding.field('pattern')}: expected a non-empty list of integers, "
                          f"got {pattern!r}")
    out: list[int | None] = [w if w > 0 else None for w in (pattern[i % len(pattern)] for i in range(n_layers))]
    if sliding.get("force_full_attention_on_first_layer", bool, False):
        out[0] = None
    if sliding.get("force_full_attention_on_last_layer", bool, False):
        out[-1] = None
    return out


def _scaling_to_hf(scaling: _Obj) -> dict[str, Any] | None:
    if not scaling.data:
        return None
    class_name = scaling.get("_CLASS_", str, "YaRN")
    if not class_name.endswith("YaRNRoPEScalingConfig") and "old_context_len" not in scaling.data:
        raise ConfigError(f"{scaling.where}: rope.scaling {class_name!r} is not supported (only YaRN)")
    factor = scaling.get("factor", _NUMBER, 8.0)
    if factor <= 0:
        raise ConfigError(f"{scaling.where}: {scaling.field('factor')}: must be positive, got {factor}")
    return {"rope_type": "yarn", "factor": factor,
            "original_max_position_embeddings": scaling.get("old_context_len", int, 8192),
            "beta_fast": scaling.get("beta_fast", _NUMBER, 32), "beta_slow": scaling.get("beta_slow", _NUMBER, 1),
            "attention_factor": yarn_mscale(factor)}


def check_model_fields(model: _Obj) -> None:
    """Refuse global-block settings bolmo does not implement; warn (naming them) about field
    names it does not know, which it ignores. Unknown names only warn: OLMo-core versions add
    bookkeeping fields, and refusing them would refuse real checkpoints."""
    unknown: list[str] = []

    def walk(data: dict[str, Any], path: str) -> None:
        for key, value in data.items():
            field = f"{path}.{key}"
            if key in _BLOCK_FIXED and value not in _BLOCK_FIXED[key]:
                raise ConfigError(f"{model.where}: {field}: {value!r} is not supported (bolmo implements "
                                  f"{_BLOCK_FIXED[key][0]!r})")
            if key not in _KNOWN_MODEL_FIELDS:
                unknown.append(field)
            elif isinstance(value, dict):
                walk(value, field)

    walk(model.data, model.path)
    if unknown:
        warn(f"{model.where}: ignoring model field(s) bolmo does not know: {', '.join(unknown)}")


def _tokenizer(config: dict[str, Any], where: str) -> dict[str, Any]:
    return _Obj(config, "", where).obj("dataset", required=False).obj("tokenizer", required=False).data


def context_length(config: dict[str, Any], rope_scaling: dict[str, Any] | None, where: str) -> int | None:
    """The positions an OLMo-core model was made for (its `model` config has no such field): YaRN's
    extended context (old_context_len x factor: 8192 x 8 = 65536 for Bolmo-7B, as released), else
    the training sequence length (`dataset.sequence_length`, `train_module.max_sequence_length`);
    None when the config holds neither."""
    if rope_scaling is not None:
        return int(rope_scaling["original_max_position_embeddings"] * rope_scaling["factor"])
    top = _Obj(config, "", where)
    for section, key in (("dataset", "sequence_length"), ("train_module", "max_sequence_length")):
        length = top.obj(section, required=False).get(key, int, None)
        if length is not None:
            if length < 2:
                raise ConfigError(f"{where}: {section}.{key}: must be an integer >= 2, got {length}")
            return length
    return None


def olmo_core_to_hf(config: dict[str, Any], where: str, subword_vocab_size: int | None = None) -> dict[str, Any]:
    """HF config.json for an OLMo-core experiment config (Olmo2/Olmo3 config dict or BolmoConfig dict).

    `subword_vocab_size`: rows of the expanded-embedding table, for configs that do not record it.
    `max_position_embeddings` is `context_length`, else the released Bolmo models' 65536 for Bolmo
    (never -1: generation and scoring size their windows with it) and OLMo-core's own -1 for a
    subword model; an `hf_overrides` value wins over both."""
    model, tok = _model_obj(config, where), _tokenizer(config, where)
    check_model_fields(model)
    fields, dtype = read_global(model)
    bolmo = model_family(config, where) == "bolmo"
    fields["max_position_embeddings"] = context_length(config, fields["rope_scaling"], where) or (
        RELEASED_BOLMO_CONTEXT if bolmo else OLMO_CORE_UNKNOWN_CONTEXT)
    if bolmo:
        out = _bolmo_hf(fields, model, tok, subword_vocab_size).to_dict()
        out["dtype"] = dtype
    else:
        out = _olmo_hf(fields, tok).to_dict(dtype)
    out.update(_Obj(config, "", where).get("hf_overrides", dict, {}))
    if "torch_dtype" in out:  # a transformers < 4.56 config keeps its own spelling of the dtype field
        out.pop("dtype")
    if out.get("model_type") == "bolmo":
        BolmoConfig.from_dict(out, where)  # the overrides must still make a valid config
    return dict(sorted(out.items()))


def _olmo_hf(fields: dict[str, Any], tok: dict[str, Any]) -> OlmoConfig:
    sliding = fields["sliding_window"] is not None
    if not sliding:  # OLMo 2: full attention everywhere, no Olmo 3 fields
        fields = {k: v for k, v in fields.items() if k not in ("layer_types", "sliding_window")}
    return OlmoConfig(model_type="olmo3" if sliding else "olmo2", **fields, eos_token_id=tok.get("eos_token_id"),
                      pad_token_id=tok.get("pad_token_id"), bos_token_id=tok.get("bos_token_id"))


def _bolmo_hf(fields: dict[str, Any], model: _Obj, tok: dict[str, Any], subword_vocab_size: int | None
              ) -> BolmoConfig:
    where, d_model, eps = model.where, fields["hidden_size"], fields["rms_norm_eps"]
    enc, dec = model.obj("local_encoder"), model.obj("local_decoder")
    for part, fixed in ((enc, _ENCODER_FIXED), (dec, _DECODER_FIXED)):
        bad = {k: part.data[k] for k, v in fixed.items() if k in part.data and part.data[k] != v}
        if bad:
            raise ConfigError(f"{where}: {part.path}: settings {bad} are not supported by the HF Bolmo model")
        if part.get("d_model", int, d_model) != d_model:
            raise ConfigError(f"{where}: {part.path}.d_model {part.data['d_model']} differs from d_model {d_model}")
    blocks = [part.obj("block_config") for part in (enc, dec)]
    heads = {b.obj("xlstm").size("num_heads") for b in blocks}
    ffn = {b.obj("feed_forward").size("hidden_size") for b in blocks}
    local_eps = {b.obj("layer_norm").get("eps", _NUMBER, 1e-5) for b in blocks}
    if len(heads) != 1 or len(ffn) != 1 or local_eps != {eps}:
        raise ConfigError(f"{where}: encoder and decoder blocks must share xlstm heads, feed-forward size and "
                          f"the global norm eps (got heads {heads}, sizes {ffn}, eps {local_eps})")
    known = {f.name for f in dataclasses.fields(ByteTokenizerConfig)}
    tokenizer = ByteTokenizerConfig.from_dict({k: v for k, v in tok.items() if k in known}, f"{where}: dataset.tokenizer")
    return BolmoConfig(
        **{**fields, "vocab_size": tokenizer.vocab_size}, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        add_expanded_embeddings=enc.get("add_expanded_embeddings", bool, False),
        boundary_predictor_lookahead=enc.get("boundary_predictor_lookahead", int, 1),
        num_local_encoder_layers=enc.size("n_layers"), num_local_decoder_layers=dec.size("n_layers"),
        num_local_heads=heads.pop(), local_intermediate_size=ffn.pop(), local_rms_norm_eps=LOCAL_RMS_NORM_EPS,
        subword_vocab_size=(enc.get("subword_vocab_size", int, None) or subword_vocab_size
                            or BolmoConfig.subword_vocab_size),
        tokenizer_config=tokenizer,
    )


# ---------------------------------------------------------------------------------- HF side
def hf_to_olmo_core(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """OLMo-core config.json ({"model", "dataset": {"tokenizer"}, "hf_overrides"}) for an HF config."""
    model_type = hf.get("model_type")
    if model_type == "bolmo":
        config = _bolmo_olmo_core(BolmoConfig.from_dict(hf, where), _hf_dtype(hf), where)
    elif model_type in ("olmo2", "olmo3"):
        hf = legacy_rope_fields(hf, where)  # transformers 5 `rope_parameters` -> rope_theta + rope_scaling
        config = _olmo_olmo_core(hf, where)
    else:
        raise ConfigError(f"{where}: model_type {model_type!r} is not supported (bolmo, olmo2, olmo3)")
    derived = olmo_core_to_hf(config, where)
    overrides = {k: v for k, v in hf.items() if k not in derived or derived[k] != v}
    if "rope_scaling" in overrides and _same_rope(overrides["rope_scaling"], derived.get("rope_scaling"), hf):
        del overrides["rope_scaling"]
    refused = sorted(set(overrides) - _HF_ONLY)
    if refused:
        raise ConfigError(f"{where}: field(s) {refused} cannot be expressed in an OLMo-core config")
    if overrides:
        config["hf_overrides"] = overrides
    return config


def _same_rope(a: dict[str, Any] | None, b: dict[str, Any] | None, hf: dict[str, Any]) -> bool:
    theta, max_pos = hf.get("rope_theta", 10000.0), hf.get("max_position_embeddings", 2048)
    return _rope_spec(a, theta, max_pos, "a") == _rope_spec(b, theta, max_pos, "b")


def _rope_spec(scaling: dict[str, Any] | None, theta: float, max_pos: int, where: str) -> RopeSpec:
    """The RoPE an HF `rope_scaling` describes, in one canonical form: `{"rope_type": "default"}`
    is plain RoPE (the same as null), and YaRN's attention factor is resolved (absent means the
    computed default, so a config that spells it out describes the same RoPE)."""
    spec = parse_rope_scaling(scaling, theta, max_pos, where)
    if spec.rope_type == "default":
        return RopeSpec(theta=theta)
    if spec.rope_type == "yarn":
        return dataclasses.replace(spec, attention_factor=spec.yarn_attention_factor(), mscale=None, mscale_all_dim=None)
    return spec


def _norm(eps: float, dtype: str) -> dict[str, Any]:
    return {"name": "rms", "eps": eps, "bias": False, "dtype": dtype, "_CLASS_": _OC + "layer_norm.LayerNormConfig"}


def _sliding(spec: TransformerSpec) -> dict[str, Any]:
    """Shortest repeating pattern of per-layer windows (-1 = full attention)."""
    values = [spec.window(i) or -1 for i in range(spec.n_layers)]
    period = next(p for p in range(1, len(values) + 1) if all(values[i] == values[i % p] for i in range(len(values))))
    return {"pattern": values[:period], "force_full_attention_on_first_layer": False,
            "force_full_attention_on_last_layer": False, "_CLASS_": _OC + "attention.SlidingWindowAttentionConfig"}


def _scaling(rope: RopeSpec, where: str) -> dict[str, Any]:
    if rope.rope_type == "default":  # plain RoPE: no scaling
        return {}
    if rope.rope_type != "yarn":
        raise ConfigError(f"{where}: rope_scaling {rope.rope_type!r} cannot be expressed in OLMo-core (only yarn)")
    return {"scaling": {"factor": rope.factor, "beta_fast": rope.beta_fast, "beta_slow": rope.beta_slow,
                        "old_context_len": rope.original_max_position_embeddings,
                        "_CLASS_": _OC + "rope.YaRNRoPEScalingConfig"}}


def _block(config: BolmoConfig | OlmoConfig, dtype: str, naming_3_0: bool, where: str) -> dict[str, Any]:
    spec = config.transformer_spec()
    attn: dict[str, Any] = {"name": "default", "n_heads": spec.n_heads}
    if spec.n_kv_heads != spec.n_heads:
        attn["n_kv_heads"] = spec.n_kv_heads
    if naming_3_0 or spec.head_dim != spec.d_model // spec.n_heads:
        attn["head_dim"] = spec.head_dim
    attn |= {
        "bias": config.attention_bias,
        "rope": {"name": "default", "theta": spec.rope_full.theta, "full_precision": True,
                 **_scaling(spec.rope_full, where), "_CLASS_": _OC + "rope.RoPEConfig"},
        "qk_norm": _norm(spec.rms_norm_eps, dtype), "dtype": dtype,
    }
    if any(spec.window(i) is not None for i in range(spec.n_layers)):
        attn["sliding_window"] = _sliding(spec)
        if naming_3_0:
            attn["backend"] = "torch"
    attn["_CLASS_"] = _OC + "attention.AttentionConfig"
    if naming_3_0:
        attn |= {"use_head_qk_norm": False, "type": "attention"}
    ff = {"hidden_size": spec.intermediate_size, "name": "default", "bias": False, "dtype": dtype,
          ("activation" if naming_3_0 else "act_name"): config.hidden_act,
          "_CLASS_": _OC + "feed_forward.FeedForwardConfig"}
    return {("sequence_mixer" if naming_3_0 else "attention"): attn, "layer_norm": _norm(spec.rms_norm_eps, dtype),
            "feed_forward": ff, "name": "reordered_norm", "_CLASS_": _OC + "transformer.config.TransformerBlockConfig"}


def _model(config: BolmoConfig | OlmoConfig, vocab_size: int, dtype: str, name: str, naming_3_0: bool,
           where: str) -> dict[str, Any]:
    """OLMo-core's model config of the global transformer an HF config class describes."""
    return {
        "d_model": config.hidden_size, "vocab_size": vocab_size, "n_layers": config.num_hidden_layers,
        "block": _block(config, dtype, naming_3_0, where),
        "lm_head": {"name": "default", "layer_norm": _norm(config.rms_norm_eps, dtype), "bias": False, "dtype": dtype,
                    "loss_implementation": "default", "_CLASS_": _OC + "lm_head.LMHeadConfig"},
        "name": name, "dtype": dtype, "init_method": "normal", "init_seed": 0, "init_std": config.initializer_range,
        "tie_word_embeddings": False, "_CLASS_": _OC + "transformer.config.TransformerConfig",
    }


def _hf_dtype(hf: dict[str, Any]) -> str:
    return hf.get("dtype") or hf.get("torch_dtype") or "float32"


def _olmo_olmo_core(hf: dict[str, Any], where: str) -> dict[str, Any]:
    # Fields OlmoConfig does not know are left to hf_to_olmo_core, which refuses them by name.
    known = {f.name for f in dataclasses.fields(OlmoConfig)} | PRETRAINED_CONFIG_KEYS
    config = OlmoConfig.from_dict({k: v for k, v in hf.items() if k in known}, where)
    out: dict[str, Any] = {"model": _model(config, config.vocab_size, _hf_dtype(hf), "default", True, where)}
    if config.eos_token_id is not None and config.pad_token_id is not None:
        tok = {"vocab_size": config.vocab_size, "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id}
        if config.bos_token_id is not None:
            tok["bos_token_id"] = config.bos_token_id
        out["dataset"] = {"tokenizer": tok | {"_CLASS_": "olmo_core.data.tokenizer.TokenizerConfig"}}
    return out


def _bolmo_olmo_core(cfg: BolmoConfig, dtype: str, where: str) -> dict[str, Any]:
    model = _model(cfg, padded_vocab_size(cfg.vocab_size), dtype, "bolmo", False, where)
    del model["tie_word_embeddings"]  # bolmo-core's config has no such field for Bolmo
    local_block = {
        "attention": {"name": "default", "n_heads": cfg.num_local_heads, "dtype": dtype,
                      "_CLASS_": _OC + "attention.AttentionConfig"},
        "layer_norm": _norm(cfg.rms_norm_eps, dtype),
        "feed_forward": {"hidden_size": cfg.local_intermediate_size, "name": "default", "bias": False,
                         "dtype": dtype, "act_name": "silu", "_CLASS_": _OC + "feed_forward.FeedForwardConfig"},
        "xlstm": {"num_heads": cfg.num_local_heads, "dtype": dtype, "_CLASS_": _OC + "xlstm.XLSTMConfig"},
        "name": "xlstm", "_CLASS_": _OC + "transformer.config.TransformerBlockConfig",
    }
    model["local_encoder"] = {
        **_ENCODER_FIXED, "d_model": cfg.hidden_size, "n_layers": cfg.num_local_encoder_layers,
        "block_config": local_block, "add_expanded_embeddings": cfg.add_expanded_embeddings,
        "boundary_predictor_lookahead": cfg.boundary_predictor_lookahead,
        **({"subword_vocab_size": cfg.subword_vocab_size} if cfg.add_expanded_embeddings else {}),
        "dtype": dtype, "_CLASS_": _OC + "bolmo.config.LocalEncoderConfig",
    }
    model["local_decoder"] = {
        **_DECODER_FIXED, "d_model": cfg.hidden_size, "n_layers": cfg.num_local_decoder_layers,
        "block_config": local_block, "dtype": dtype, "_CLASS_": _OC + "bolmo.config.LocalDecoderConfig",
    }
    if cfg.local_rms_norm_eps != LOCAL_RMS_NORM_EPS:
        raise ConfigError(f"{where}: local_rms_norm_eps {cfg.local_rms_norm_eps} cannot be expressed in "
                          f"OLMo-core (bolmo-core always uses {LOCAL_RMS_NORM_EPS})")
    tokenizer = dataclasses.asdict(cfg.tokenizer_config) | {"_CLASS_": "olmo_core.data.tokenizer.ByteTokenizerConfig"}
    return {"model": model, "dataset": {"tokenizer": tokenizer}}

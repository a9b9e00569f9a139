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
import math
from dataclasses import dataclass
from typing import Any

from bolmo.checkpoint.keymaps import padded_vocab_size
from bolmo.config import BolmoConfig, ByteTokenizerConfig, parse_rope_scaling
from bolmo.errors import ConfigError

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
                  "hnet_modulate": False, "blt_compat": False, "fuse_boundaries": True, "no_boundaries": False}
LOCAL_RMS_NORM_EPS = 1e-5  # bolmo-core builds post_last_block_norm / initial_norm with nn.RMSNorm's default


@dataclass
class GlobalSpec:
    """The OLMo 2 / Olmo 3 style transformer both formats describe, in neutral terms."""

    d_model: int
    n_layers: int
    vocab_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_hidden: int
    eps: float
    theta: float
    rope_scaling: dict[str, Any] | None  # HF form
    windows: list[int | None]  # per layer: keys visible (including the query), None = full attention
    bias: bool
    activation: str
    dtype: str
    init_std: float


# ---------------------------------------------------------------------------------- OLMo-core side
def _get(d: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ConfigError(f"{where}: missing field {key!r}")
    return d[key]


def model_family(config: dict[str, Any], where: str) -> str:
    """'bolmo' or 'olmo' for an OLMo-core experiment config; refuses other architectures."""
    model = _get(config, "model", where)
    name = model.get("name", "default")
    if name == "bolmo":
        return "bolmo"
    if name != "default":
        raise ConfigError(f"{where}: model.name {name!r} is not supported (supported: default (OLMo 2/3), bolmo)")
    return "olmo"


def read_global(model: dict[str, Any], where: str) -> GlobalSpec:
    """Parse the global transformer of an OLMo-core model config (either naming)."""
    block = _get(model, "block", f"{where}: model")
    if block.get("name") != "reordered_norm":
        raise ConfigError(f"{where}: model.block.name {block.get('name')!r} is not supported "
                          "(OLMo 2 / Olmo 3 use 'reordered_norm')")
    key = "sequence_mixer" if "sequence_mixer" in block else "attention"
    attn = _get(block, key, f"{where}: model.block")
    if attn.get("type", "attention") != "attention" or attn.get("name", "default") != "default":
        raise ConfigError(f"{where}: model.block.{key}: only default attention is supported")
    if attn.get("use_head_qk_norm"):
        raise ConfigError(f"{where}: model.block.{key}.use_head_qk_norm=true has no HF equivalent")
    qk_norm, norm = attn.get("qk_norm"), _get(block, "layer_norm", f"{where}: model.block")
    if not qk_norm:
        raise ConfigError(f"{where}: model.block.{key}.qk_norm is missing (OLMo 2 / Olmo 3 have QK-norm)")
    head_norm = _get(model, "lm_head", f"{where}: model").get("layer_norm") or norm
    eps_values = {n.get("eps", 1e-5) for n in (norm, qk_norm, head_norm)}
    if len(eps_values) != 1 or any(n.get("name", "rms") != "rms" for n in (norm, qk_norm, head_norm)):
        raise ConfigError(f"{where}: block, QK and head norms must all be RMSNorm with one eps, got {eps_values}")
    ff = _get(block, "feed_forward", f"{where}: model.block")
    if ff.get("bias") or ff.get("name", "default") != "default":
        raise ConfigError(f"{where}: model.block.feed_forward: only the default bias-free SwiGLU is supported")
    if model.get("tie_word_embeddings"):
        raise ConfigError(f"{where}: model.tie_word_embeddings=true is not supported")
    d_model, n_heads = _get(model, "d_model", where), _get(attn, "n_heads", where)
    n_layers = _get(model, "n_layers", where)
    rope = attn.get("rope") or {}
    if rope.get("name", "default") not in ("default", "fused"):
        raise ConfigError(f"{where}: rope.name {rope.get('name')!r} is not supported")
    return GlobalSpec(
        d_model=d_model, n_layers=n_layers, vocab_size=_get(model, "vocab_size", where), n_heads=n_heads,
        n_kv_heads=attn.get("n_kv_heads") or n_heads, head_dim=attn.get("head_dim") or d_model // n_heads,
        ffn_hidden=_get(ff, "hidden_size", f"{where}: model.block.feed_forward"), eps=eps_values.pop(),
        theta=rope.get("theta", 500_000), rope_scaling=_scaling_to_hf(rope.get("scaling"), where),
        windows=_windows(attn.get("sliding_window"), n_layers), bias=bool(attn.get("bias", False)),
        activation=ff.get("activation", ff.get("act_name", "silu")), dtype=model.get("dtype", "float32"),
        init_std=model.get("init_std", 0.02),
    )


def _windows(sliding: dict[str, Any] | None, n_layers: int) -> list[int | None]:
    if not sliding:
        return [None] * n_layers
    pattern = sliding["pattern"]
    out: list[int | None] = [w if w > 0 else None for w in (pattern[i % len(pattern)] for i in range(n_layers))]
    if sliding.get("force_full_attention_on_first_layer"):
        out[0] = None
    if sliding.get("force_full_attention_on_last_layer"):
        out[-1] = None
    return out


def _scaling_to_hf(scaling: dict[str, Any] | None, where: str) -> dict[str, Any] | None:
    if not scaling:
        return None
    if not str(scaling.get("_CLASS_", "YaRN")).endswith("YaRNRoPEScalingConfig") and "old_context_len" not in scaling:
        raise ConfigError(f"{where}: rope.scaling {scaling.get('_CLASS_')!r} is not supported (only YaRN)")
    factor = scaling.get("factor", 8.0)
    return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": scaling.get("old_context_len", 8192),
            "beta_fast": scaling.get("beta_fast", 32), "beta_slow": scaling.get("beta_slow", 1),
            "attention_factor": 0.1 * math.log(factor) + 1.0}


def _tokenizer(config: dict[str, Any]) -> dict[str, Any]:
    return (config.get("dataset") or {}).get("tokenizer") or {}


def olmo_core_to_hf(config: dict[str, Any], where: str, subword_vocab_size: int | None = None) -> dict[str, Any]:
    """HF config.json for an OLMo-core experiment config (Olmo2/Olmo3 config dict or BolmoConfig dict).

    `subword_vocab_size`: rows of the expanded-embedding table, for configs that do not record it."""
    model, tok = config["model"], _tokenizer(config)
    g = read_global(model, where)
    if model_family(config, where) == "bolmo":
        out = _bolmo_hf(g, model, tok, subword_vocab_size, where).to_dict()
        out["dtype"] = g.dtype
    else:
        out = _olmo_hf(g, tok, where)
    out.update(config.get("hf_overrides") or {})
    if "torch_dtype" in out:  # a transformers < 4.56 config keeps its own spelling of the dtype field
        out.pop("dtype")
    if out.get("model_type") == "bolmo":
        BolmoConfig.from_dict(out, where)  # the overrides must still make a valid config
    return dict(sorted(out.items()))


def _olmo_hf(g: GlobalSpec, tok: dict[str, Any], where: str) -> dict[str, Any]:
    sliding = sorted({w for w in g.windows if w is not None})
    if len(sliding) > 1:
        raise ConfigError(f"{where}: sliding windows of different sizes {sliding} have no HF equivalent")
    out: dict[str, Any] = {
        "architectures": ["Olmo3ForCausalLM" if sliding else "Olmo2ForCausalLM"],
        "model_type": "olmo3" if sliding else "olmo2",
        "attention_bias": g.bias, "attention_dropout": 0.0, "dtype": g.dtype,
        "eos_token_id": tok.get("eos_token_id"), "pad_token_id": tok.get("pad_token_id"),
        "hidden_act": g.activation, "hidden_size": g.d_model, "initializer_range": g.init_std,
        "intermediate_size": g.ffn_hidden, "max_position_embeddings": -1, "num_attention_heads": g.n_heads,
        "num_hidden_layers": g.n_layers, "num_key_value_heads": g.n_kv_heads, "rms_norm_eps": g.eps,
        "rope_scaling": g.rope_scaling, "rope_theta": g.theta, "tie_word_embeddings": False,
        "use_cache": True, "vocab_size": g.vocab_size,
    }
    if tok.get("bos_token_id") is not None:
        out["bos_token_id"] = tok["bos_token_id"]
    if g.head_dim != g.d_model // g.n_heads:
        out["head_dim"] = g.head_dim
    if sliding:
        out["layer_types"] = ["full_attention" if w is None else "sliding_attention" for w in g.windows]
        out["sliding_window"] = sliding[0]  # OLMo-core's pattern value is the HF window (query included)
    return out


def _bolmo_hf(g: GlobalSpec, model: dict[str, Any], tok: dict[str, Any], subword_vocab_size: int | None,
              where: str) -> BolmoConfig:
    enc, dec = _get(model, "local_encoder", f"{where}: model"), _get(model, "local_decoder", f"{where}: model")
    for name, part, fixed in (("local_encoder", enc, _ENCODER_FIXED), ("local_decoder", dec, _DECODER_FIXED)):
        bad = {k: part[k] for k, v in fixed.items() if k in part and part[k] != v}
        if bad:
            raise ConfigError(f"{where}: model.{name}: settings {bad} are not supported by the HF Bolmo model")
        if part.get("d_model", g.d_model) != g.d_model:
            raise ConfigError(f"{where}: model.{name}.d_model {part.get('d_model')} differs from d_model {g.d_model}")
    enc_block, dec_block = (_get(p, "block_config", f"{where}: model.local_*") for p in (enc, dec))
    heads = {b["xlstm"]["num_heads"] for b in (enc_block, dec_block)}
    ffn = {b["feed_forward"]["hidden_size"] for b in (enc_block, dec_block)}
    local_eps = {b["layer_norm"].get("eps", 1e-5) for b in (enc_block, dec_block)}
    if len(heads) != 1 or len(ffn) != 1 or local_eps != {g.eps}:
        raise ConfigError(f"{where}: encoder and decoder blocks must share xlstm heads, feed-forward size and "
                          f"the global norm eps (got heads {heads}, sizes {ffn}, eps {local_eps})")
    known = {f.name for f in dataclasses.fields(ByteTokenizerConfig)}
    tokenizer = ByteTokenizerConfig.from_dict({k: v for k, v in tok.items() if k in known}, f"{where}: dataset.tokenizer")
    sliding = sorted({w for w in g.windows if w is not None})
    if len(sliding) > 1:
        raise ConfigError(f"{where}: sliding windows of different sizes {sliding} have no HF equivalent")
    return BolmoConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=g.d_model, intermediate_size=g.ffn_hidden,
        num_hidden_layers=g.n_layers, num_attention_heads=g.n_heads, num_key_value_heads=g.n_kv_heads,
        head_dim=None if g.head_dim == g.d_model // g.n_heads else g.head_dim, hidden_act=g.activation,
        max_position_embeddings=-1, initializer_range=g.init_std, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, rope_theta=g.theta,
        rope_scaling=g.rope_scaling, attention_bias=g.bias, rms_norm_eps=g.eps,
        sliding_window=sliding[0] if sliding else None,
        layer_types=["full_attention" if w is None else "sliding_attention" for w in g.windows],
        add_expanded_embeddings=bool(enc.get("add_expanded_embeddings", False)),
        boundary_predictor_lookahead=enc.get("boundary_predictor_lookahead", 1),
        num_local_encoder_layers=enc["n_layers"], num_local_decoder_layers=dec["n_layers"],
        num_local_heads=heads.pop(), local_intermediate_size=ffn.pop(), local_rms_norm_eps=LOCAL_RMS_NORM_EPS,
        subword_vocab_size=enc.get("subword_vocab_size") or subword_vocab_size or BolmoConfig.subword_vocab_size,
        tokenizer_config=tokenizer,
    )


# ---------------------------------------------------------------------------------- HF side
def hf_to_olmo_core(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """OLMo-core config.json ({"model", "dataset": {"tokenizer"}, "hf_overrides"}) for an HF config."""
    model_type = hf.get("model_type")
    if model_type == "bolmo":
        config = _bolmo_olmo_core(BolmoConfig.from_dict(hf, where), hf.get("dtype") or hf.get("torch_dtype"), where)
    elif model_type in ("olmo2", "olmo3"):
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
    return parse_rope_scaling(a, theta, max_pos, "a") == parse_rope_scaling(b, theta, max_pos, "b")


def _global_from_hf(hf: dict[str, Any], vocab_size: int, where: str) -> GlobalSpec:
    n_layers, d_model = _get(hf, "num_hidden_layers", where), _get(hf, "hidden_size", where)
    n_heads = _get(hf, "num_attention_heads", where)
    layer_types = hf.get("layer_types") or ["full_attention"] * n_layers
    window = hf.get("sliding_window")
    return GlobalSpec(
        d_model=d_model, n_layers=n_layers, vocab_size=vocab_size, n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=hf.get("head_dim") or d_model // n_heads,
        ffn_hidden=_get(hf, "intermediate_size", where), eps=hf.get("rms_norm_eps", 1e-5),
        theta=hf.get("rope_theta", 10000.0), rope_scaling=hf.get("rope_scaling"),
        windows=[window if t == "sliding_attention" else None for t in layer_types],
        bias=bool(hf.get("attention_bias", False)), activation=hf.get("hidden_act", "silu"),
        dtype=hf.get("dtype") or hf.get("torch_dtype") or "float32", init_std=hf.get("initializer_range", 0.02),
    )


def _norm(g: GlobalSpec) -> dict[str, Any]:
    return {"name": "rms", "eps": g.eps, "bias": False, "dtype": g.dtype, "_CLASS_": _OC + "layer_norm.LayerNormConfig"}


def _sliding(g: GlobalSpec) -> dict[str, Any]:
    """Shortest repeating pattern of per-layer windows (-1 = full attention)."""
    values = [-1 if w is None else w for w in g.windows]
    period = next(p for p in range(1, len(values) + 1) if all(values[i] == values[i % p] for i in range(len(values))))
    return {"pattern": values[:period], "force_full_attention_on_first_layer": False,
            "force_full_attention_on_last_layer": False, "_CLASS_": _OC + "attention.SlidingWindowAttentionConfig"}


def _scaling_from_hf(scaling: dict[str, Any] | None, where: str) -> dict[str, Any]:
    if not scaling:
        return {}
    if scaling.get("rope_type", scaling.get("type")) != "yarn":
        raise ConfigError(f"{where}: rope_scaling {scaling.get('rope_type')!r} cannot be expressed in OLMo-core (only yarn)")
    return {"scaling": {"factor": scaling["factor"], "beta_fast": scaling.get("beta_fast", 32),
                        "beta_slow": scaling.get("beta_slow", 1),
                        "old_context_len": scaling["original_max_position_embeddings"],
                        "_CLASS_": _OC + "rope.YaRNRoPEScalingConfig"}}


def _block(g: GlobalSpec, naming_3_0: bool, where: str) -> dict[str, Any]:
    attn: dict[str, Any] = {"name": "default", "n_heads": g.n_heads}
    if g.n_kv_heads != g.n_heads:
        attn["n_kv_heads"] = g.n_kv_heads
    if naming_3_0 or g.head_dim != g.d_model // g.n_heads:
        attn["head_dim"] = g.head_dim
    attn |= {
        "bias": g.bias,
        "rope": {"name": "default", "theta": g.theta, "full_precision": True,
                 **_scaling_from_hf(g.rope_scaling, where), "_CLASS_": _OC + "rope.RoPEConfig"},
        "qk_norm": _norm(g), "dtype": g.dtype,
    }
    if any(w is not None for w in g.windows):
        attn["sliding_window"] = _sliding(g)
        if naming_3_0:
            attn["backend"] = "torch"
    attn["_CLASS_"] = _OC + "attention.AttentionConfig"
    if naming_3_0:
        attn |= {"use_head_qk_norm": False, "type": "attention"}
    ff = {"hidden_size": g.ffn_hidden, "name": "default", "bias": False, "dtype": g.dtype,
          ("activation" if naming_3_0 else "act_name"): g.activation, "_CLASS_": _OC + "feed_forward.FeedForwardConfig"}
    return {("sequence_mixer" if naming_3_0 else "attention"): attn, "layer_norm": _norm(g), "feed_forward": ff,
            "name": "reordered_norm", "_CLASS_": _OC + "transformer.config.TransformerBlockConfig"}


def _model(g: GlobalSpec, name: str, naming_3_0: bool, where: str) -> dict[str, Any]:
    return {
        "d_model": g.d_model, "vocab_size": g.vocab_size, "n_layers": g.n_layers,
        "block": _block(g, naming_3_0, where),
        "lm_head": {"name": "default", "layer_norm": _norm(g), "bias": False, "dtype": g.dtype,
                    "loss_implementation": "default", "_CLASS_": _OC + "lm_head.LMHeadConfig"},
        "name": name, "dtype": g.dtype, "init_method": "normal", "init_seed": 0, "init_std": g.init_std,
        "tie_word_embeddings": False, "_CLASS_": _OC + "transformer.config.TransformerConfig",
    }


def _olmo_olmo_core(hf: dict[str, Any], where: str) -> dict[str, Any]:
    if hf.get("tie_word_embeddings"):
        raise ConfigError(f"{where}: tie_word_embeddings=true is not supported")
    config: dict[str, Any] = {"model": _model(_global_from_hf(hf, _get(hf, "vocab_size", where), where), "default", True, where)}
    if hf.get("eos_token_id") is not None and hf.get("pad_token_id") is not None:
        tok = {"vocab_size": hf["vocab_size"], "eos_token_id": hf["eos_token_id"], "pad_token_id": hf["pad_token_id"]}
        if hf.get("bos_token_id") is not None:
            tok["bos_token_id"] = hf["bos_token_id"]
        config["dataset"] = {"tokenizer": tok | {"_CLASS_": "olmo_core.data.tokenizer.TokenizerConfig"}}
    return config


def _bolmo_olmo_core(cfg: BolmoConfig, dtype: str | None, where: str) -> dict[str, Any]:
    g = _global_from_hf(cfg.to_dict() | {"dtype": dtype or "float32"}, padded_vocab_size(cfg.vocab_size), where)
    model = _model(g, "bolmo", False, where)
    del model["tie_word_embeddings"]  # bolmo-core's config has no such field for Bolmo
    local_block = {
        "attention": {"name": "default", "n_heads": cfg.num_local_heads, "dtype": g.dtype,
                      "_CLASS_": _OC + "attention.AttentionConfig"},
        "layer_norm": _norm(g),
        "feed_forward": {"hidden_size": cfg.local_intermediate_size, "name": "default", "bias": False,
                         "dtype": g.dtype, "act_name": "silu", "_CLASS_": _OC + "feed_forward.FeedForwardConfig"},
        "xlstm": {"num_heads": cfg.num_local_heads, "dtype": g.dtype, "_CLASS_": _OC + "xlstm.XLSTMConfig"},
        "name": "xlstm", "_CLASS_": _OC + "transformer.config.TransformerBlockConfig",
    }
    model["local_encoder"] = {
        **_ENCODER_FIXED, "d_model": cfg.hidden_size, "n_layers": cfg.num_local_encoder_layers,
        "block_config": local_block, "add_expanded_embeddings": cfg.add_expanded_embeddings,
        "boundary_predictor_lookahead": cfg.boundary_predictor_lookahead,
        **({"subword_vocab_size": cfg.subword_vocab_size} if cfg.add_expanded_embeddings else {}),
        "dtype": g.dtype, "_CLASS_": _OC + "bolmo.config.LocalEncoderConfig",
    }
    model["local_decoder"] = {
        **_DECODER_FIXED, "d_model": cfg.hidden_size, "n_layers": cfg.num_local_decoder_layers,
        "block_config": local_block, "dtype": g.dtype, "_CLASS_": _OC + "bolmo.config.LocalDecoderConfig",
    }
    if cfg.local_rms_norm_eps != LOCAL_RMS_NORM_EPS:
        raise ConfigError(f"{where}: local_rms_norm_eps {cfg.local_rms_norm_eps} cannot be expressed in "
                          f"OLMo-core (bolmo-core always uses {LOCAL_RMS_NORM_EPS})")
    tokenizer = dataclasses.asdict(cfg.tokenizer_config) | {"_CLASS_": "olmo_core.data.tokenizer.ByteTokenizerConfig"}
    return {"model": model, "dataset": {"tokenizer": tokenizer}}

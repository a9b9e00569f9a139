"""Tiny OLMo 2 / Olmo 3 subword models built and saved by transformers itself, for the subword,
byteify and merge tests. The tokenizer is the tiny-gqa fixture's byte-level BPE (1000 ids,
<|endoftext|> = 0 is bos and eos, <|pad|> = 1)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from conftest import BOLMO_FIXTURES

TOKENIZER_DIR = BOLMO_FIXTURES / "tiny-gqa" / "subword_tokenizer"
VOCAB = 1000

COMMON = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
    rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
    pad_token_id=1, initializer_range=0.2,  # peaked logits: greedy decoding has no near-ties
)
OLMO2 = dict(COMMON, num_hidden_layers=2)
OLMO3 = dict(
    COMMON, num_hidden_layers=4, sliding_window=4,
    layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                  "beta_fast": 32.0, "beta_slow": 1.0},
)


def build_hf_model(model_type: str, seed: int = 0, **overrides):
    """A randomly initialized transformers Olmo2ForCausalLM / Olmo3ForCausalLM (float32, eval)."""
    import transformers

    kwargs = dict(OLMO2 if model_type == "olmo2" else OLMO3, **overrides)
    if model_type == "olmo3" and not transformers.__version__.startswith("4."):
        kwargs = olmo3_rope_parameters(kwargs)
    config_cls = transformers.Olmo2Config if model_type == "olmo2" else transformers.Olmo3Config
    model_cls = transformers.Olmo2ForCausalLM if model_type == "olmo2" else transformers.Olmo3ForCausalLM
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    with torch.no_grad():  # norms start at 1; make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def olmo3_rope_parameters(kwargs: dict) -> dict:
    """transformers 5 spells Olmo 3's RoPE as `rope_parameters` per layer type; from the 4.x fields it
    gives sliding layers its default theta (500000), not `rope_theta`. Say it the 5.x way, with one
    theta for both layer types as in the released models."""
    kwargs = dict(kwargs)
    theta = kwargs.pop("rope_theta")
    scaling = kwargs.pop("rope_scaling", None) or {"rope_type": "default"}
    kwargs["rope_parameters"] = {"full_attention": {**scaling, "rope_theta": theta},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": theta}}
    return kwargs


def save_hf_model(model, directory: Path, with_tokenizer: bool = True) -> Path:
    model.save_pretrained(directory, safe_serialization=True)
    if with_tokenizer:
        for file in TOKENIZER_DIR.iterdir():
            shutil.copy2(file, directory / file.name)
    return directory


def train_tokenizer(directory: Path, vocab_size: int = 300) -> Path:
    """A byte-level BPE trained on a few lines (for fixtures whose vocabulary is smaller than 1000)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["def f(x):\n    return x + 1\n", "The quick brown fox jumps over the lazy dog.", "héllo wörld"] * 20
    tokenizer.train_from_iterator(text, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    (directory / "tokenizer_config.json").write_text(json.dumps({**special, "tokenizer_class": "PreTrainedTokenizerFast"}))
    return directory

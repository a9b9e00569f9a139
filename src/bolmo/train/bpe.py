"""Train a small byte-level BPE tokenizer, for toy teachers made from scratch (recipes/toy).

The result has the shape `bolmo prepare` and the OLMo models expect: GPT-2 byte alphabet (every
byte is a token, so any text tokenizes), no normalisation, `<|endoftext|>` as EOS and BOS,
`<|pad|>` as PAD, and an HF `tokenizer_config.json` naming them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def train_bpe(files: Iterable[str | Path], out: str | Path, vocab_size: int) -> Path:
    """Train on the UTF-8 text `files` and write `out/tokenizer.json` + `tokenizer_config.json`.
    `vocab_size` counts the 256 byte tokens and the two special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train([str(f) for f in files], trainer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": EOS_TOKEN, "bos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}, indent=2) + "\n")
    return out

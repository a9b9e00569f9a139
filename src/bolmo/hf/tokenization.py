"""`AutoTokenizer` for Bolmo: transformers' tokenizer interface over bolmo's byte tokenizer.

Ids are bolmo's (`bolmo.tokenizer.ByteTokenizer`): BOS, then byte + 4; the 260 boundary-fused ids
decode as their plain byte. Text is never split on special-token strings, so `encode(text)` equals
`bolmo.load(dir).tokenizer.encode(text)` for every text. Tokens are one character per byte (the
byte-level BPE alphabet, so every byte has a printable name). There is no vocabulary file to save:
the byte vocabulary is fixed, and `tokenizer_config.json` names the class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizer

from bolmo.config import BYTE_OFFSET, PLAIN_VOCAB, ByteTokenizerConfig, read_json
from bolmo.tokenizer import ByteTokenizer, gpt2_unicode_to_byte


class BolmoTokenizer(PreTrainedTokenizer):
    vocab_files_names: dict[str, str] = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, tokenizer_config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if tokenizer_config is None:  # the model's own, from the config.json beside tokenizer_config.json
            tokenizer_config = _model_tokenizer_config(kwargs.get("name_or_path"))
        config = ByteTokenizerConfig.from_dict(tokenizer_config or {})
        self.bytes = ByteTokenizer(config)
        self._char_to_byte = gpt2_unicode_to_byte()
        self._byte_to_char = {b: c for c, b in self._char_to_byte.items()}
        names = config.special_tokens
        kwargs.setdefault("padding_side", "left")  # generation pads on the left
        kwargs.setdefault("split_special_tokens", True)
        for key in ("bos_token", "eos_token", "pad_token"):
            kwargs.pop(key, None)  # always the config's, whatever an older tokenizer_config.json says
        super().__init__(bos_token=names[config.bos_token_id], eos_token=names[config.eos_token_id],
                         pad_token=names[config.pad_token_id], **kwargs)

    @property
    def vocab_size(self) -> int:
        return PLAIN_VOCAB

    def get_vocab(self) -> dict[str, int]:
        vocab = {name: i for i, name in enumerate(self.bytes.config.special_tokens)}
        vocab.update({self._byte_to_char[b]: b + BYTE_OFFSET for b in range(256)})
        return vocab

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return [self._byte_to_char[b] for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        if token in self._char_to_byte:
            return self._char_to_byte[token] + BYTE_OFFSET
        return self.bytes.config.special_tokens.index(token)

    def _convert_id_to_token(self, index: int) -> str:
        plain = index % PLAIN_VOCAB
        if plain < BYTE_OFFSET:
            return self.bytes.config.special_tokens[plain]
        return self._byte_to_char[plain - BYTE_OFFSET]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        out, pending = [], bytearray()
        for token in tokens:
            if token in self._char_to_byte:
                pending.append(self._char_to_byte[token])
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending.clear()
            out.append(token)
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def build_inputs_with_special_tokens(self, token_ids_0: list[int],
                                         token_ids_1: list[int] | None = None) -> list[int]:
        return [self.bos_token_id] + token_ids_0 + (token_ids_1 or [])

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        if already_has_special_tokens:
            return [int(i % PLAIN_VOCAB < BYTE_OFFSET) for i in token_ids_0]
        return [1] + [0] * (len(token_ids_0) + len(token_ids_1 or []))

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()


def _model_tokenizer_config(directory: str | None) -> dict[str, Any] | None:
    """`tokenizer_config` of a Bolmo config.json in `directory`, if there is one."""
    if not directory or not (Path(directory) / "config.json").is_file():
        return None
    data = read_json(Path(directory) / "config.json")
    return data.get("tokenizer_config") if data.get("model_type") == "bolmo" else None

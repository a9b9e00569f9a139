"""A subword OLMo model's own tokenizer (an HF `tokenizer.json`), read with the `tokenizers`
library so transformers stays a test-only dependency.

Same surface as `ByteTokenizer` where it makes sense: `encode` puts the start id first (OLMo
tokenizers add none themselves; their documents are separated by end-of-text, which therefore
doubles as the start of a document), `decode` drops special tokens, `batch` pads. Decoding goes
through each token's exact bytes, so generation can count and cut bytes without re-tokenizing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from bolmo.errors import TokenizerError
from bolmo.tokenizer import ByteTokenizer, _special_token_ids, checked_ids, read_hf_tokenizer, token_bytes


class SubwordTokenizer:
    """Text <-> subword ids of an HF tokenizer directory (tokenizer.json + its config files)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._tokenizer = read_hf_tokenizer(self.directory)
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        special = _special_token_ids(self.directory, vocab)
        self.eos_id: int | None = special["eos"]
        self.pad_id: int = special["pad"] if special["pad"] is not None else 0  # padding is masked anyway
        self.bos_id: int | None = special["bos"] if special["bos"] is not None else special["eos"]
        self.vocab_size = max(vocab.values()) + 1  # ids may be sparse; this is the table size they need
        specials = {i for i, tok in self._tokenizer.get_added_tokens_decoder().items() if tok.special}
        # Special tokens decode to nothing (as with skip_special_tokens); ids absent from the
        # vocabulary (gaps) have no bytes either and are never generated.
        self._bytes: list[bytes] = [b""] * self.vocab_size
        self.has_token = torch.zeros(self.vocab_size, dtype=torch.bool)
        for tok, i in vocab.items():
            self.has_token[i] = True
            if i not in specials:
                self._bytes[i] = token_bytes(tok)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Start id (end-of-text when the tokenizer has no BOS) followed by the text's ids."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if not add_bos:
            return ids
        if self.bos_id is None:
            raise TokenizerError(f"{self.directory}: the tokenizer names neither a bos nor an eos token")
        return [self.bos_id] + ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self._bytes[i] for i in checked_ids(ids, self.vocab_size))

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # Same encode-and-pad as the byte tokenizer (it only uses `encode` and `pad_id`).
    batch = ByteTokenizer.batch

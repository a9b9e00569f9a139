"""The teacher's subword vocabulary as training needs it: raw bytes per token id, EOS/PAD ids,
and the whitespace-initial tables used by ALM debiasing.

Only byte-level BPE tokenizers (the OLMo family's) are supported: every token string is written in
the GPT-2 byte<->unicode alphabet, so a token's raw bytes are known exactly and the bytes of a
tokenized document are the concatenation of its tokens' bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from bolmo.errors import TokenizerError
from bolmo.tokenizer import _special_token_ids, gpt2_unicode_to_byte, read_hf_tokenizer, token_bytes

# Raw bytes that make a token "whitespace-initial" for ALM debiasing: space, LF, tab (the dolma2
# set of tokens starting with Ġ, Ċ or ĉ).
WHITESPACE_BYTES = (0x20, 0x0A, 0x09)


@dataclass
class SubwordVocab:
    """A loaded HF `tokenizers` tokenizer plus the byte view of its vocabulary."""

    path: Path
    token_bytes: list[bytes]  # token id -> its raw bytes (bolmo.tokenizer.token_bytes; special tokens too)
    eos_id: int  # appended after every document (the teacher's EOS_s)
    pad_id: int  # fills teacher windows after a stripped leading EOS (PAD_s; = eos_id if none)
    sha256: str  # of tokenizer.json: a prepared data set is tied to one exact tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    @classmethod
    def load(cls, path: str | Path) -> "SubwordVocab":
        path = Path(path)
        file = path / "tokenizer.json"
        tokenizer = load_tokenizer(path)
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        added = {tok.content for tok in tokenizer.get_added_tokens_decoder().values()}
        table = gpt2_unicode_to_byte()
        by_id = [b""] * (max(vocab.values()) + 1)
        for token, index in vocab.items():
            if token not in added and not all(ch in table for ch in token):
                raise TokenizerError(
                    f"{file}: token {token!r} (id {index}) is not in the byte-level alphabet; only "
                    f"byte-level BPE tokenizers (GPT-2 style, like the OLMo tokenizers) are supported"
                )
            by_id[index] = token_bytes(token)
        special = _special_token_ids(path, vocab)
        eos = special["eos"] if special["eos"] is not None else vocab.get("<|endoftext|>")
        if eos is None:
            raise TokenizerError(f"{path}: no eos_token in tokenizer_config.json / special_tokens_map.json "
                                 f"and no <|endoftext|> token; documents need an end-of-text id")
        pad = special["pad"] if special["pad"] is not None else eos
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        return cls(path=path, token_bytes=by_id, eos_id=eos, pad_id=pad, sha256=digest)

    def whitespace_initial_ids(self) -> list[int]:
        """Token ids whose bytes start with space, LF or tab: the teacher's side of ALM
        debiasing ("the next token starts with whitespace")."""
        return [i for i, b in enumerate(self.token_bytes) if b and b[0] in WHITESPACE_BYTES]


def load_tokenizer(path: Path):
    """The fast tokenizer, set to encode special-token strings found in documents as plain text:
    a literal "<|endoftext|>" inside a web page must not become a document break."""
    tokenizer = read_hf_tokenizer(path)
    tokenizer.encode_special_tokens = True
    return tokenizer

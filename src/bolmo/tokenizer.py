"""Byte tokenizer, fused-boundary ids, and subword expansion.

Ids: 0 <pad>, 1 <bos> (also EOS in released models), 2 <eos>, 3 <bpe_token_end>; byte b -> b + 4.
The model's 520-way output adds 260 to an id to say "and a patch ends after it".

Subword expansion gives every byte position the id of the longest subword-vocabulary entry whose
bytes end exactly there. We keep our own reversed trie (rather than calling the subword tokenizer)
because the expansion is a suffix match, not a tokenization, and the generator needs it one byte
at a time in O(longest entry).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import torch

from bolmo.config import BPE_TOKEN_END_ID, BYTE_OFFSET, PLAIN_VOCAB, SPECIAL_TOKENS, ByteTokenizerConfig
from bolmo.errors import TokenizerError

SUBWORD_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
# Where a Bolmo directory keeps its subword tokenizer (byteify-init and the trainer's exports put it there)
SUBWORD_TOKENIZER_DIR = "subword_tokenizer"


def read_hf_tokenizer(directory: str | Path):
    """The `tokenizers.Tokenizer` of an HF tokenizer directory; a TokenizerError naming the file
    when its tokenizer.json is absent or cannot be read."""
    directory = Path(directory)
    file = directory / "tokenizer.json"
    if not file.is_file():
        raise TokenizerError(f"{directory}: no tokenizer.json (an HF tokenizers directory is required)")
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises its own exception type for malformed files
        raise TokenizerError(f"{file}: cannot be read ({exc})") from None


@lru_cache(maxsize=1)
def gpt2_unicode_to_byte() -> dict[str, int]:
    """The standard byte-level BPE table (GPT-2): printable bytes map to themselves, the rest to
    code points from 256 upwards. Returned inverted: character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_bytes(token: str) -> bytes:
    """The bytes a byte-level BPE vocabulary entry stands for, exactly as the `tokenizers`
    ByteLevel decoder turns it into bytes: a token written entirely in the byte alphabet maps
    character by character, any other token (a plain-text added token such as "a b") is its own
    UTF-8. An added token spelled in alphabet characters ("é·") therefore means the bytes those
    characters stand for (E9 B7), as `Tokenizer.decode` has it, not its UTF-8 spelling.

    Hand-written because `tokenizers` only returns decoded *text*, which replaces the bytes of a
    partial UTF-8 sequence (one token of a multi-byte character) with U+FFFD."""
    table = gpt2_unicode_to_byte()
    if all(ch in table for ch in token):
        return bytes(table[ch] for ch in token)
    return token.encode("utf-8")


class SubwordExpander:
    """Longest-suffix match of byte ids against a subword vocabulary (a reversed trie).

    The trie lives in one dict keyed by `node * 512 + byte_id` (one flat dict is several times
    smaller than a dict per node for a 100k-entry vocabulary) plus a list of terminal ids.
    """

    _STRIDE = 512

    def __init__(self, sequences: Iterable[tuple[Sequence[int], int]], bpe_token_end_id: int = BPE_TOKEN_END_ID,
                 fallback_id: int = 0) -> None:
        self.children: dict[int, int] = {}
        self.terminal: list[int] = [-1]
        self.max_len = 0
        self.bpe_token_end_id = bpe_token_end_id
        # Positions with no vocabulary match (only special ids of tokenizers without bos/pad
        # tokens; every real byte matches in a byte-level vocabulary) get this id.
        self.fallback_id = fallback_id
        for seq, subword_id in sequences:
            self._insert(seq, subword_id)

    def _insert(self, seq: Sequence[int], subword_id: int) -> None:
        node = 0
        for byte_id in reversed(seq):
            key = node * self._STRIDE + byte_id
            child = self.children.get(key)
            if child is None:
                child = len(self.terminal)
                self.terminal.append(-1)
                self.children[key] = child
            node = child
        self.terminal[node] = subword_id
        self.max_len = max(self.max_len, len(seq))

    def expand_at(self, ids: Sequence[int], pos: int) -> int:
        """The expansion of position `pos`, looking only at ids[:pos + 1]."""
        node, best = 0, self.fallback_id
        children, terminal, stride, marker = self.children, self.terminal, self._STRIDE, self.bpe_token_end_id
        for j in range(pos, -1, -1):
            byte_id = ids[j]
            if byte_id == marker:
                continue
            if byte_id >= PLAIN_VOCAB:
                byte_id -= PLAIN_VOCAB
            node = children.get(node * stride + byte_id, -1)
            if node < 0:
                break
            if terminal[node] >= 0:
                best = terminal[node]
        return best

    def expand(self, ids: Sequence[int]) -> list[int]:
        return [self.expand_at(ids, i) for i in range(len(ids))]

    def expand_tensor(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] ids -> [B, L] subword ids (computed on the host, returned on the ids' device)."""
        rows = input_ids.tolist()
        out = torch.tensor([self.expand(row) for row in rows], dtype=torch.long)
        return out.to(input_ids.device)

    @classmethod
    def from_directory(cls, path: str | Path, byte_config: ByteTokenizerConfig) -> "SubwordExpander":
        """Build from an HF tokenizer directory (tokenizer.json + tokenizer_config.json)."""
        path = Path(path)
        tokenizer = read_hf_tokenizer(path)
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        added = set(tokenizer.get_added_tokens_decoder())
        special = _special_token_ids(path, vocab)
        return cls.from_vocab(vocab, special, byte_config, added)

    @classmethod
    def from_vocab(cls, vocab: dict[str, int], special_ids: dict[str, int | None],
                   byte_config: ByteTokenizerConfig, added_ids: set[int] = frozenset()) -> "SubwordExpander":
        """`special_ids` holds the subword tokenizer's "eos", "bos" and "pad" ids (or None);
        `added_ids` its added tokens.

        Entries with the same byte sequence (BOS and EOS both map to Bolmo's id 1; an added token
        spelling a BPE token's bytes) would make the reference's result depend on the hash order
        of `get_vocab()`, which changes from process to process. Here one fixed rule decides, so
        data preparation, training and inference always agree: the EOS id wins (the released
        models expand id 1 to EOS), then a regular vocabulary entry over an added token, then the
        lowest id."""
        bolmo_names = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
        remap = [
            (special_ids.get("eos"), byte_config.eos_token_id),
            (special_ids.get("bos"), byte_config.bos_token_id),
            (special_ids.get("pad"), byte_config.pad_token_id),
        ]

        def byte_sequence(token: str, subword_id: int) -> list[int]:
            if token in bolmo_names:
                return [bolmo_names[token]]
            for source_id, bolmo_id in remap:
                if source_id is not None and subword_id == source_id:
                    return [bolmo_id]
            return [b + BYTE_OFFSET for b in token_bytes(token)]

        eos = special_ids.get("eos")

        def priority(subword_id: int) -> tuple[bool, bool, int]:
            return subword_id == eos, subword_id not in added_ids, -subword_id

        # Inserted in increasing priority: for equal sequences the last insertion wins.
        ordered = sorted(vocab.items(), key=lambda item: priority(item[1]))
        sequences = ((byte_sequence(tok, i), i) for tok, i in ordered)
        pad_source = special_ids.get("pad")
        fallback = pad_source if pad_source is not None else 0
        return cls(sequences, byte_config.bpe_token_end_id, fallback_id=fallback)


def _special_token_ids(path: Path, vocab: dict[str, int]) -> dict[str, int | None]:
    """eos/bos/pad ids of an HF tokenizer directory, from tokenizer_config.json or
    special_tokens_map.json (values are strings or {"content": ...} objects)."""
    found: dict[str, int | None] = {"eos": None, "bos": None, "pad": None}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"{file}: not valid JSON ({exc})") from None
        for kind in found:
            value = data.get(f"{kind}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value in vocab and found[kind] is None:
                found[kind] = vocab[value]
    return found


def resolve_subword_tokenizer(identifier: str, model_dir: str | Path | None) -> Path:
    """Find the subword tokenizer directory named by `tokenizer_config.original_identifier`:
    relative to the model directory first, then as a path, then in the local Hub cache.
    Never touches the network."""
    candidates = []
    if model_dir is not None:
        candidates.append(Path(model_dir) / identifier)
    candidates.append(Path(identifier).expanduser())
    for candidate in candidates:
        if (candidate / "tokenizer.json").is_file():
            return candidate
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(identifier, local_files_only=True, allow_patterns=SUBWORD_TOKENIZER_FILES)
        if (Path(local) / "tokenizer.json").is_file():
            return Path(local)
    except Exception:  # not in the cache, or not a valid repo id: fall through to the message below
        pass
    raise TokenizerError(
        f"subword tokenizer {identifier!r} (config.json tokenizer_config.original_identifier) is not "
        f"available locally; `bolmo download` of the model fetches it into the local Hub cache, or point "
        f"original_identifier at a local tokenizer directory"
    )


def checked_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """`ids` as a list of ints, or TokenizerError naming the first one that is not an id in
    [0, vocab_size) and its position: decoding would otherwise wrap it around or fail inside an index."""
    result = []
    for position, i in enumerate(ids):
        try:
            value = operator.index(i)
        except TypeError:
            raise TokenizerError(f"ids[{position}] is a {type(i).__name__}, not an integer id") from None
        if not 0 <= value < vocab_size:
            raise TokenizerError(f"ids[{position}] = {value} is not a token id (the vocabulary has ids 0 to "
                                 f"{vocab_size - 1})")
        result.append(value)
    return result


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Id lists -> (input_ids [B, L] padded with `pad_id`, attention_mask [B, L] bool, True on real ids)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, row in enumerate(rows):
        span = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
        ids[b, span] = torch.tensor(row, dtype=torch.long)
        mask[b, span] = True
    return ids, mask


class ByteTokenizer:
    """Text <-> Bolmo ids. `encode` gives BOS followed by byte ids; `decode` drops specials."""

    def __init__(self, config: ByteTokenizerConfig | None = None, expander: SubwordExpander | None = None) -> None:
        self.config = config or ByteTokenizerConfig()
        self.expander = expander

    @property
    def bos_id(self) -> int:
        return self.config.bos_token_id

    @property
    def eos_id(self) -> int:
        return self.config.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.config.pad_token_id

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [b + BYTE_OFFSET for b in text.encode("utf-8")]
        return [self.bos_id] + ids if add_bos else ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of `ids`: fused ids count as their plain byte, specials are dropped."""
        plain = (i % PLAIN_VOCAB for i in checked_ids(ids, self.config.vocab_size))
        return bytes(i - BYTE_OFFSET for i in plain if i >= BYTE_OFFSET)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def batch(self, texts: Sequence[str], padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
        """Encode and pad: (input_ids [B, L], attention_mask [B, L] bool, True on real ids)."""
        return pad_rows([self.encode(t) for t in texts], self.pad_id, padding_side)

    def expand(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.expander is None:
            raise TokenizerError("this model has no subword expansion (add_expanded_embeddings is false)")
        return self.expander.expand_tensor(input_ids)


def tokenizer_of(model):
    """The tokenizer of a model from `bolmo.load`, or TokenizerError: a subword model loads without
    one when its directory has no tokenizer.json."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise TokenizerError("this model was loaded without a tokenizer (its directory has no tokenizer.json)")
    return tokenizer

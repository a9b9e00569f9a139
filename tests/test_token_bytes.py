"""One token -> bytes rule for the whole toolkit (subword tokenizer, subword expander, training
vocabulary), pinned against what the `tokenizers` library itself decodes."""

from __future__ import annotations

import json

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from tokenizers.trainers import BpeTrainer

from bolmo.config import BYTE_OFFSET, ByteTokenizerConfig
from bolmo.olmo.tokenizer import SubwordTokenizer
from bolmo.tokenizer import SubwordExpander, token_bytes
from bolmo.train.vocab import SubwordVocab

PLAIN_ADDED = ["é·", "a b", "Ġé x", "ÃĦ", "xyz"]  # alphabet-only, plain text, mixed, one character, ASCII
SPECIAL = ["<|endoftext|>", "<|pad|>"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                         special_tokens=SPECIAL[:1], show_progress=False)
    tok.train_from_iterator(["hello world héllo wörld ☃ snow", "the cat sat on the mat"], trainer)
    tok.add_tokens([AddedToken(t, normalized=False) for t in PLAIN_ADDED])
    tok.add_special_tokens(SPECIAL[1:])
    path = tmp_path_factory.mktemp("bpe")
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": SPECIAL[0], "pad_token": SPECIAL[1]}))
    return path


def test_token_bytes_is_what_tokenizers_decodes(tokenizer_dir):
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    checked = partial = 0
    for token, i in tok.get_vocab(with_added_tokens=True).items():
        decoded = tok.decode([i], skip_special_tokens=False)
        raw = token_bytes(token)
        # tokenizers returns text: bytes that are not whole UTF-8 characters come back as U+FFFD.
        assert decoded == raw.decode("utf-8", errors="replace"), token
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            partial += 1
        else:
            assert decoded.encode("utf-8") == raw == text.encode("utf-8"), token
            checked += 1
    assert checked > 150 and partial > 5


def test_partial_utf8_tokens_map_through_the_byte_alphabet(tokenizer_dir):
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)
    assert token_bytes("é·") == b"\xe9\xb7"  # an added token in alphabet characters: E9 B7, not C3 A9 C2 B7
    assert token_bytes("Ã") == b"\xc3" and token_bytes("Ħ") == b"\x84"
    assert token_bytes("Ġé x") == "Ġé x".encode()  # not all alphabet: the token's own UTF-8
    # Two partial tokens that together make one character decode to that character.
    assert tok.decode([vocab["Ã"], vocab["Ħ"]]).encode() == token_bytes("Ã") + token_bytes("Ħ") == "Ä".encode()
    assert tok.decode([vocab["é·"]]) == "\ufffd"  # E9 B7 is the start of a 3-byte character


def test_every_user_of_token_bytes_agrees(tokenizer_dir):
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)
    subword = SubwordTokenizer(tokenizer_dir)
    training = SubwordVocab.load(tokenizer_dir)
    expander = SubwordExpander.from_directory(tokenizer_dir, ByteTokenizerConfig())
    for token in PLAIN_ADDED + ["Ġworld", "Ã"]:
        i = vocab[token]
        want = token_bytes(token)
        assert subword.decode_bytes([i]) == want, token
        assert training.token_bytes[i] == want, token
        ids = [b + BYTE_OFFSET for b in want]
        assert expander.expand(ids)[-1] == i, token
    # Special tokens: no text for the subword tokenizer (skip_special_tokens), their spelling for training.
    assert subword.decode_bytes([vocab["<|pad|>"]]) == b""
    assert training.token_bytes[vocab["<|pad|>"]] == b"<|pad|>"

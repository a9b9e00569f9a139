"""Byte tokenizer and subword expansion rules beyond what the fixtures exercise."""

from __future__ import annotations

import random

from bolmo.config import ByteTokenizerConfig
from bolmo.tokenizer import SubwordExpander

# A byte-level BPE vocabulary in GPT-2 characters ("Ġ" is the space byte).
BASE_VOCAB = {"a": 0, "b": 1, "Ġ": 2, "ab": 3, "Ġab": 4}


def expander(vocab: dict[str, int], special: dict[str, int | None], added: set[int] = frozenset()) -> SubwordExpander:
    return SubwordExpander.from_vocab(vocab, special, ByteTokenizerConfig(), added)


def ids(text: str) -> list[int]:
    return [1] + [b + 4 for b in text.encode()]


def test_longest_entry_ending_at_each_position():
    exp = expander(BASE_VOCAB, {"eos": None, "bos": None, "pad": None})
    assert exp.expand(ids("ab ab")) == [0, 0, 3, 2, 0, 4]  # BOS has no entry: the fallback id 0
    fused = [i + 260 if i >= 4 else i for i in ids("ab ab")]
    assert exp.expand(fused) == exp.expand(ids("ab ab"))  # boundary-fused ids count as plain ones
    assert exp.expand([1, 4 + 97, 3, 4 + 98]) == [0, 0, 0, 3]  # bpe_token_end markers are skipped


def test_ties_resolve_the_same_whatever_the_vocabulary_order():
    """BOS and EOS both map to Bolmo's id 1, and an added token can spell a BPE token's bytes:
    the result must not depend on the dict order (the reference's depends on hash order)."""
    vocab = {**BASE_VOCAB, "<s>": 5, "</s>": 6, "<pad>": 7, "ab ": 8, "abĠ": 9}
    special = {"eos": 6, "bos": 5, "pad": 7}
    results = set()
    for seed in range(20):
        order = list(vocab.items())
        random.Random(seed).shuffle(order)
        exp = expander(dict(order), special, added={5, 6, 7, 8})
        results.add(tuple(exp.expand(ids("ab ab "))))
    # id 1 -> EOS (6); "ab " -> the regular entry 9, not the added plain-text token 8.
    assert results == {(6, 0, 3, 9, 0, 4, 9)}

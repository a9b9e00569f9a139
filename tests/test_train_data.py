"""`bolmo prepare` and ByteDataset: formats, bad records, resumability, the hand-worked instance
of docs/training-reference.md §1.9, shuffling, ranks and state_dict resume."""

from __future__ import annotations

import argparse
import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from bolmo.errors import BolmoError, ConfigError
from bolmo.tokenizer import gpt2_unicode_to_byte
from bolmo.train import prepare as prepare_mod
from bolmo.train.compression import compress_batch
from bolmo.train.data import ByteDataConfig, ByteDataset, DataError
from bolmo.train.losses import patch_alignment
from bolmo.train.prepare import PrepareConfig, format_summary, prepare
from bolmo.train.vocab import SubwordVocab

# Merged tokens of the tiny BPE (GPT-2 alphabet: Ġ is a space). Intermediate merges are vocabulary
# entries too, which makes "longest entry ending here" differ from "the token holding this byte".
MERGES = [("H", "i"), ("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("Ġthe", "r"), ("Ġther", "e"),
          ("N", "e"), ("Ne", "x"), ("Nex", "t"), ("Ġ", "u"), ("Ġu", "p")]


def make_tokenizer(directory: Path) -> Path:
    """A byte-level BPE: 256 byte tokens, <|endoftext|> (EOS) and <|pad|>, and MERGES."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(gpt2_unicode_to_byte(), key=lambda c: gpt2_unicode_to_byte()[c])
    vocab = {"<|endoftext|>": 0, "<|pad|>": 1}
    for token in chars + [a + b for a, b in MERGES]:
        vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "pad_token": "<|pad|>"}))
    return directory


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "bpe")


def token_id(tokenizer_dir: Path, token: str) -> int:
    return json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"][token]


def run_prepare(inputs: list[Path], tokenizer: Path, out: Path, **kw) -> dict:
    return prepare(PrepareConfig(inputs=inputs, tokenizer=tokenizer, out=out, progress=False, **kw))


def b(text: str) -> list[int]:
    return [x + 4 for x in text.encode("utf-8")]


# ------------------------------------------------------------------------------------- prepare

def test_boundaries_tokens_and_expansion_from_known_tokenization(tokenizer: Path, tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_text("Hi there.")
    meta = run_prepare([tmp_path / "doc.txt"], tokenizer, tmp_path / "out")
    shard = tmp_path / "out" / meta["shards"][0]["name"]

    def load(name: str) -> np.ndarray:
        return np.load(shard / f"{name}.npy")

    def v(token: str) -> int:
        return token_id(tokenizer, token)

    # "Hi there." -> Hi | Ġthere | . then the document's EOS (id 0 in this tokenizer).
    assert load("tokens").tolist() == [v("Hi"), v("Ġthere"), v("."), 0]
    assert load("bytes").tolist() == b("Hi there.") + [1]
    assert load("token_offsets").tolist() == [0, 2, 8, 9, 10]
    assert load("boundaries").tolist() == [0, 1, 0, 0, 0, 0, 0, 1, 1, 1]
    assert load("doc_offsets").tolist() == [0, 4]
    # Longest vocabulary entry ending at each byte: at "h" it is "Ġth" (an intermediate merge),
    # at the final "e" the whole "Ġthere"; the EOS byte expands to the EOS id.
    expected = [v("H"), v("Hi"), v("Ġ"), v("Ġt"), v("Ġth"), v("Ġthe"), v("Ġther"), v("Ġthere"), v("."), 0]
    assert load("expanded").tolist() == expected
    assert meta["counts"]["text_tokens"] == 3 and meta["counts"]["text_bytes"] == 9
    assert meta["dtypes"]["tokens"] == "uint16"


def test_prepare_formats_and_bad_records(tokenizer: Path, tmp_path: Path) -> None:
    import zstandard

    good = [json.dumps({"text": "Hi there."}), json.dumps({"text": "Next up", "id": 3})]
    lines = good + ["{not json", json.dumps({"text": 5}), json.dumps({"id": 1}), json.dumps({"text": ""}),
                    json.dumps({"text": "bad \ud800 surrogate"})]
    payload = ("\n".join(lines) + "\n").encode() + b'{"text": "\xff\xfe"}\n'
    (tmp_path / "a.jsonl").write_bytes(payload)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    (tmp_path / "d.txt").write_text("A plain text file, é 日本.")
    meta = run_prepare([tmp_path / n for n in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.txt")], tokenizer,
                       tmp_path / "out", docs_per_shard=3)
    c = meta["counts"]
    assert c["records"] == 3 * 8 + 1 and c["documents"] == 3 * 2 + 1 and c["empty"] == 3
    assert c["bad"] == {"invalid_json": 3, "missing_text": 3, "non_string_text": 3, "undecodable": 6}
    assert meta["bad_examples"]["invalid_json"][0] == f"{tmp_path / 'a.jsonl'}:3"
    assert meta["bad_examples"]["undecodable"][:2] == [f"{tmp_path / 'a.jsonl'}:7", f"{tmp_path / 'a.jsonl'}:8"]
    assert c["text_bytes"] == 3 * (9 + 7) + len("A plain text file, é 日本.".encode())
    assert "undecodable" in format_summary(meta) and "bytes per token" in format_summary(meta)
    # The three JSON formats give the same documents.
    ds = ByteDataset(tmp_path / "out", ByteDataConfig(tokens_per_instance=2, shuffle=False))
    assert len(ds) == meta["counts"]["stream_tokens"] // 2


def test_prepare_truncated_archive_is_counted(tokenizer: Path, tmp_path: Path) -> None:
    data = gzip.compress(("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(200)) + "\n").encode())
    (tmp_path / "t.jsonl.gz").write_bytes(data[: len(data) // 2])
    meta = run_prepare([tmp_path / "t.jsonl.gz"], tokenizer, tmp_path / "out")
    assert meta["counts"]["bad"]["unreadable_file"] == 1
    # Every complete line that the first half of the archive decompresses to is a document.
    readable = zlib.decompressobj(wbits=31).decompress(data[: len(data) // 2])
    assert meta["counts"]["documents"] == readable.count(b"\n") == 91


def test_prepare_rejects_bad_arguments(tokenizer: Path, tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(DataError, match="x.csv"):
        run_prepare([tmp_path / "x.csv"], tokenizer, tmp_path / "out")
    with pytest.raises(DataError, match="no such file"):
        run_prepare([tmp_path / "missing.jsonl"], tokenizer, tmp_path / "out")
    (tmp_path / "a.txt").write_text("Hi")
    run_prepare([tmp_path / "a.txt"], tokenizer, tmp_path / "out2")
    with pytest.raises(ConfigError, match="docs_per_shard"):
        run_prepare([tmp_path / "a.txt"], tokenizer, tmp_path / "out2", docs_per_shard=7)


def _arrays(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.npy"))}


def test_prepare_resumes_after_interrupt_identically(tokenizer: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"Hi there {i}. Next up"}) + "\n"
                                               for i in range(10)))
    inputs = [tmp_path / "in.jsonl"]
    reference = run_prepare(inputs, tokenizer, tmp_path / "ref", docs_per_shard=3, max_documents=8)

    real, calls, crash_at = prepare_mod.process_shard, [], [2]

    def interrupted(*args):
        calls.append(1)
        if len(calls) in crash_at:
            raise RuntimeError("simulated crash")
        return real(*args)

    monkeypatch.setattr(prepare_mod, "process_shard", interrupted)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_prepare(inputs, tokenizer, tmp_path / "out", docs_per_shard=3, max_documents=8)
    assert (tmp_path / "out" / "shard-00000" / "stats.json").is_file()
    assert not (tmp_path / "out" / "shard-00001").exists() and not (tmp_path / "out" / "meta.json").exists()
    calls.clear()
    crash_at.clear()
    resumed = run_prepare(inputs, tokenizer, tmp_path / "out", docs_per_shard=3, max_documents=8)
    assert len(calls) == 2  # shard 0 was not redone
    assert resumed == reference
    assert _arrays(tmp_path / "out") == _arrays(tmp_path / "ref")
    assert reference["counts"]["documents"] == 8


def test_prepare_workers_give_identical_output(tokenizer: Path, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"Next up {i} Hi there"}) + "\n"
                                               for i in range(40)))
    run_prepare([tmp_path / "in.jsonl"], tokenizer, tmp_path / "one", docs_per_shard=4)
    run_prepare([tmp_path / "in.jsonl"], tokenizer, tmp_path / "two", docs_per_shard=4, workers=2)
    assert _arrays(tmp_path / "one") == _arrays(tmp_path / "two")


def test_prepare_uses_at_most_one_worker_per_cpu(tokenizer: Path, tmp_path: Path, monkeypatch) -> None:
    from bolmo.errors import BolmoWarning
    from bolmo.train import prepare as prepare_mod

    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(6)))
    pools = []
    monkeypatch.setattr(prepare_mod.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    context = prepare_mod.multiprocessing.get_context("fork")  # one object per method: patched for this test only
    real_pool = context.Pool
    monkeypatch.setattr(context, "Pool", lambda processes, *a: pools.append(processes) or real_pool(processes, *a))
    with pytest.warns(BolmoWarning, match="--workers 1000: this machine runs 2 processes at once; using 2"):
        run_prepare([tmp_path / "in.jsonl"], tokenizer, tmp_path / "out", docs_per_shard=2, workers=1000)
    assert pools == [2]
    run_prepare([tmp_path / "in.jsonl"], tokenizer, tmp_path / "one", docs_per_shard=2)
    assert _arrays(tmp_path / "out") == _arrays(tmp_path / "one")


def test_cli_prepare_with_workers_ends_cleanly(tokenizer: Path, tmp_path: Path) -> None:
    """The CLI turns SIGTERM into an exception; forked workers must not inherit that, or ending the
    pool printed a worker traceback and could hang the run (a worker killed inside the queue lock)."""
    import subprocess
    import sys

    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"Next up {i} Hi there"}) + "\n"
                                               for i in range(24)))
    for run in range(3):
        out = tmp_path / f"out{run}"
        done = subprocess.run([sys.executable, "-m", "bolmo.cli", "prepare", str(tmp_path / "in.jsonl"), "--tokenizer",
                               str(tokenizer), "--out", str(out), "--docs-per-shard", "2", "--workers", "2",
                               "--no-progress"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert (out / "meta.json").is_file()


def test_cli_prepare(tokenizer: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bolmo.cli import train_commands

    (tmp_path / "a.txt").write_text("Hi there.")
    parser = argparse.ArgumentParser()
    train_commands.register(parser.add_subparsers())
    args = parser.parse_args(["prepare", str(tmp_path / "a.txt"), "--tokenizer", str(tokenizer),
                              "--out", str(tmp_path / "out"), "--no-progress"])
    assert args.handler(args) == 0
    assert "documents      1" in capsys.readouterr().out
    args = parser.parse_args(["prepare", str(tmp_path / "a.txt"), "--tokenizer", str(tmp_path),
                              "--out", str(tmp_path / "out2")])
    with pytest.raises(BolmoError, match="tokenizer.json"):
        args.handler(args)


# ------------------------------------------------------------------------------------- dataset

@pytest.fixture(scope="module")
def worked(tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token stream: "abcdefg" (7 tokens) EOS | Hi Ġthere . EOS | Next Ġup EOS -> with S = 7,
    instance 1 is the window [EOS, Hi, Ġthere, ., EOS, Next, Ġup] of docs/training-reference.md §1.9."""
    d = tmp_path_factory.mktemp("worked")
    (d / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ("abcdefg", "Hi there.", "Next up")))
    run_prepare([d / "in.jsonl"], tokenizer, d / "out", docs_per_shard=2)  # the window spans 2 shards
    return d / "out"


def test_instance_matches_hand_worked_example(worked: Path, tokenizer: Path) -> None:
    ds = ByteDataset(worked, ByteDataConfig(tokens_per_instance=7, seq_len=20, shuffle=False))
    assert len(ds) == 2  # 15 tokens
    x = ds[1]

    def v(token: str) -> int:
        return token_id(tokenizer, token)

    assert x["input_ids"].tolist() == [1] + b("Hi there.") + [1] + b("Next up") + [0, 0]
    assert x["patch_lens"].tolist() == [1, 2, 6, 1, 1, 4, 3]
    ends = [0, 2, 8, 10, 14, 17]  # 9 ('.') is dropped: the next byte is EOS
    assert torch.nonzero(x["boundary_targets"]).flatten().tolist() == ends
    labels = x["labels"].tolist()
    plain = b("Hi there.") + [1] + b("Next up")
    expected = [plain[t] for t in range(17)] + [-100, -100, -100]
    for t in (1, 7, 9, 13):  # fused: the next byte closes a patch and itself has a label
        expected[t] += 260
    assert labels == expected
    assert labels[8] == ord(".") + 4 and labels[16] == ord("p") + 4  # not fused (EOS rule, last byte)
    assert x["teacher_input_ids"].tolist() == [0, v("Hi"), v("Ġthere"), v("."), 0, v("Next"), v("Ġup")]
    assert x["teacher_target_ids"].tolist() == [v("Hi"), v("Ġthere"), v("."), 0, v("Next"), v("Ġup"), 1]
    # Expansion restarts at BOS: byte 1 ("H") must not see the previous document's bytes.
    assert x["expanded_input_ids"].tolist()[:4] == [0, v("H"), v("Hi"), v("Ġ")]
    assert x["expanded_input_ids"].tolist()[17:] == [v("Ġup"), 0, 0]
    _, aligned, used = patch_alignment(x["boundary_targets"][None], x["patch_lens"][None])
    assert aligned[0][used[0]].tolist() == [0, 1, 2, 4, 5, 6]  # teacher position 3 (".") has no slot


def test_instance_truncates_overflowing_patches(worked: Path) -> None:
    x = ByteDataset(worked, ByteDataConfig(tokens_per_instance=7, seq_len=16, shuffle=False))[1]
    assert x["patch_lens"].tolist() == [1, 2, 6, 1, 1, 4, 0]  # " up" would end at byte 17
    assert x["input_ids"].tolist()[14:] == [ord("t") + 4, ord(" ") + 4]
    assert torch.nonzero(x["boundary_targets"]).flatten().tolist() == [0, 2, 8, 10, 14]
    assert x["labels"].tolist()[13:] == [ord("t") + 4 + 260, ord(" ") + 4, -100]


def test_first_instance_and_default_seq_len(worked: Path) -> None:
    x = ByteDataset(worked, ByteDataConfig(tokens_per_instance=7, shuffle=False))[0]
    assert x["input_ids"].shape == (42,)
    assert x["patch_lens"].tolist() == [1] * 7  # BOS + a..f (g is the skipped last token)
    assert x["teacher_target_ids"].tolist()[-1] == token_id(worked / "tokenizer", "g")


def _corpus(tokenizer: Path, tmp_path: Path, n: int = 30) -> Path:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"Hi there {i}. Next up!"}) + "\n"
                                               for i in range(n)))
    run_prepare([tmp_path / "in.jsonl"], tokenizer, tmp_path / "out", docs_per_shard=7)
    return tmp_path / "out"


def test_shuffle_ranks_and_resume(tokenizer: Path, tmp_path: Path) -> None:
    data = _corpus(tokenizer, tmp_path)
    cfg = ByteDataConfig(tokens_per_instance=8, seed=3)
    single = ByteDataset(data, cfg)
    n = len(single)
    order = [int(x["index"]) for x in single]
    assert sorted(order) == list(range(n)) and order != list(range(n))
    assert [int(x["index"]) for x in ByteDataset(data, cfg)] == order  # deterministic by seed
    # Two ranks, local batch 2: each global batch is 4 consecutive entries of the permutation.
    ranks = [ByteDataset(data, cfg, rank=r, world_size=2).batches(2) for r in range(2)]
    for step in range(n // 4):
        got = [next(it)["index"].tolist() for it in ranks]
        assert not set(got[0]) & set(got[1])
        assert sorted(got[0] + got[1]) == sorted(order[4 * step:4 * step + 4])
    # Resume: a fresh dataset loaded with the state continues exactly, across the epoch end too.
    ds = ByteDataset(data, cfg)
    it = ds.batches(3)
    for _ in range(2):
        next(it)
    state = ds.state_dict()
    expected = [next(it)["index"].tolist() for _ in range(n // 3)]
    resumed = ByteDataset(data, cfg)
    resumed.load_state_dict(state)
    it2 = resumed.batches(3)
    assert [next(it2)["index"].tolist() for _ in range(n // 3)] == expected
    # A resumed run may change world size when the consumed count splits evenly.
    two = [ByteDataset(data, cfg, rank=r, world_size=2) for r in range(2)]
    for d in two:
        d.load_state_dict({**state, "consumed": 6})
    merged = next(two[0].batches(1))["index"].tolist() + next(two[1].batches(1))["index"].tolist()
    assert merged == order[6:8]
    with pytest.raises(DataError, match="seed"):
        ByteDataset(data, ByteDataConfig(tokens_per_instance=8, seed=4)).load_state_dict(state)


def test_compression_batches_rewrite_targets(tokenizer: Path, tmp_path: Path) -> None:
    data = _corpus(tokenizer, tmp_path, n=6)
    for kind in ("bpe", "space"):
        ds = ByteDataset(data, ByteDataConfig(tokens_per_instance=16, compression=kind, shuffle=False))
        batch = next(ds.batches(2))
        out = compress_batch(batch, kind, ratio=6.0, rng=np.random.default_rng(0))
        n_bytes = (batch["labels"] != -100).sum(1)
        ratio = n_bytes / (out["patch_lens"] != 0).sum(1)
        assert (ratio > n_bytes / (batch["patch_lens"] != 0).sum(1)).all()
        assert "teacher_input_ids" not in out
        assert (out["labels"] % 260 == batch["labels"] % 260).all()
        assert out["boundary_targets"].sum() < batch["boundary_targets"].sum()


def test_whitespace_initial_ids(tokenizer: Path) -> None:
    vocab = SubwordVocab.load(tokenizer)
    ids = set(vocab.whitespace_initial_ids())
    for token in ("Ġ", "Ġthere", "Ġup", "Ċ", "ĉ"):
        assert token_id(tokenizer, token) in ids
    assert token_id(tokenizer, "Hi") not in ids and len(ids) == 3 + 7  # Ġ Ċ ĉ, and Ġt Ġth Ġthe Ġther Ġthere Ġu Ġup


def test_prepare_cli_takes_the_bundled_teachers_tokenizer(tmp_path: Path, capsys) -> None:
    from bolmo.cli import main

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Hello bytes and patches. " * 20)
    assert main(["prepare", str(tmp_path / "docs"), "--tokenizer", "default-teacher", "--out", str(tmp_path / "d"),
                 "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "d").is_dir()

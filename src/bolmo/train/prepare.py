"""`bolmo prepare`: tokenize documents with the teacher's subword tokenizer into memory-mapped arrays.

Input records (one per .txt file, one per line of .jsonl / .jsonl.gz / .jsonl.zst) are numbered in
input order and cut into shards of `docs_per_shard` records. A shard is a pure function of its
records, written to a temporary directory and renamed into place when complete, so an interrupted
run resumes by skipping the shards that exist and the output never depends on `workers`.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import multiprocessing
import os
import shutil
import signal
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bolmo.config import BYTE_OFFSET, EOS_ID, ByteTokenizerConfig
from bolmo.errors import ConfigError, warn
from bolmo.tokenizer import SUBWORD_TOKENIZER_FILES, SubwordExpander
from bolmo.train.data import FORMAT_NAME, FORMAT_VERSION, DataError
from bolmo.train.vocab import SubwordVocab, load_tokenizer

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst")
BAD_EXAMPLES = 5  # file:line locations kept per reason


@dataclass
class PrepareConfig:
    inputs: list[Path]
    tokenizer: Path
    out: Path
    workers: int = 1
    max_documents: int | None = None  # input records read (bad and empty ones count)
    docs_per_shard: int = 10_000
    progress: bool = True

    def __post_init__(self) -> None:
        self.inputs = [Path(p) for p in self.inputs]
        self.tokenizer, self.out = Path(self.tokenizer), Path(self.out)
        for flag, value in (("--workers", self.workers), ("--max-documents", self.max_documents),
                            ("--docs-per-shard", self.docs_per_shard)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{flag} must be a positive integer, got {value!r}")


@dataclass
class Record:
    where: str  # "file:line" (line 1 for a .txt file)
    payload: bytes | None  # None when the file itself could not be read from here on
    is_json: bool
    error: str = ""


@dataclass
class ShardStats:
    documents: int = 0
    text_bytes: int = 0
    text_tokens: int = 0
    records: int = 0
    empty: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    bad_examples: dict[str, list[str]] = field(default_factory=dict)

    def add_bad(self, reason: str, where: str) -> None:
        self.bad[reason] = self.bad.get(reason, 0) + 1
        examples = self.bad_examples.setdefault(reason, [])
        if len(examples) < BAD_EXAMPLES:
            examples.append(where)


def resolve_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; directories expanded to their supported files in sorted order."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)))
        elif not item.is_file():
            raise DataError(f"{item}: no such file or directory")
        elif not item.name.endswith(SUFFIXES):
            raise DataError(f"{item}: unsupported input (expected one of {', '.join(SUFFIXES)})")
        else:
            files.append(item)
    if not files:
        raise DataError(f"no input files with a supported suffix ({', '.join(SUFFIXES)}) in {inputs}")
    return files


def _open_lines(path: Path) -> io.BufferedIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True,
                                                                          closefd=True))
    return open(path, "rb")


def iter_records(files: list[Path]) -> Iterator[Record]:
    """Every input record in order. A file that breaks mid-way (truncated archive) yields one
    error record at the break and the run goes on with the next file."""
    for path in files:
        if path.name.endswith(".txt"):
            try:
                yield Record(f"{path}:1", path.read_bytes(), is_json=False)
            except OSError:
                yield Record(f"{path}:1", None, is_json=False, error="unreadable_file")
            continue
        line = 0
        try:
            with _open_lines(path) as fh:
                for line, raw in enumerate(fh, start=1):
                    yield Record(f"{path}:{line}", raw, is_json=True)
        except Exception:  # gzip/zstd raise several unrelated types for corrupt streams
            yield Record(f"{path}:{line + 1}", None, is_json=True, error="unreadable_file")


def parse_record(record: Record) -> tuple[str | None, str]:
    """(text, "") or (None, reason). Blank .jsonl lines are empty documents, not bad ones."""
    if record.payload is None:
        return None, record.error
    try:
        raw = record.payload.decode("utf-8")
    except UnicodeDecodeError:
        return None, "undecodable"
    if not record.is_json:
        return raw, ""
    if not raw.strip():
        return "", ""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        return None, "invalid_json"
    if not isinstance(obj, dict) or "text" not in obj:
        return None, "missing_text"
    text = obj["text"]
    if not isinstance(text, str):
        return None, "non_string_text"
    try:  # JSON may carry lone surrogates ("\ud800"), which have no UTF-8 form
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None, "undecodable"
    return text, ""


_WORKER: dict[str, Any] = {}


def _worker_tools(tokenizer_dir: Path) -> tuple[Any, SubwordVocab, SubwordExpander]:
    """Tokenizer, vocabulary and expander, built once per process."""
    key = str(tokenizer_dir)
    if key not in _WORKER:
        _WORKER[key] = (load_tokenizer(tokenizer_dir), SubwordVocab.load(tokenizer_dir),
                        SubwordExpander.from_directory(tokenizer_dir, ByteTokenizerConfig()))
    return _WORKER[key]


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


def process_shard(records: list[Record], shard_dir: Path, tokenizer_dir: Path) -> ShardStats:
    """Tokenize one shard's records and write its arrays (atomically: temp dir, then rename)."""
    tokenizer, vocab, expander = _worker_tools(tokenizer_dir)
    stats = ShardStats(records=len(records))
    texts, wheres = [], []
    for record in records:
        text, reason = parse_record(record)
        if text is None:
            stats.add_bad(reason, record.where)
        elif not text:
            stats.empty += 1
        else:
            texts.append(text)
            wheres.append(record.where)
    dtype = id_dtype(vocab.vocab_size)
    byte_lens = np.array([len(b) for b in vocab.token_bytes], np.int64)
    byte_parts, token_parts, len_parts, doc_tokens = [], [], [], [0]
    for text, where, enc in zip(texts, wheres, tokenizer.encode_batch(texts, add_special_tokens=False)):
        data = text.encode("utf-8")
        if b"".join(vocab.token_bytes[i] for i in enc.ids) != data:  # e.g. a normalizer changed the text
            stats.add_bad("untokenizable", where)
            continue
        ids = np.asarray(enc.ids + [vocab.eos_id], np.int64)
        byte_parts.append(np.frombuffer(data, np.uint8).astype(np.uint16) + BYTE_OFFSET)
        byte_parts.append(np.array([EOS_ID], np.uint16))
        token_parts.append(ids)
        len_parts.append(np.concatenate([byte_lens[ids[:-1]], [1]]))
        doc_tokens.append(doc_tokens[-1] + len(ids))
        stats.documents += 1
        stats.text_bytes += len(data)
        stats.text_tokens += len(ids) - 1
    stream = np.concatenate(byte_parts) if byte_parts else np.zeros(0, np.uint16)
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(len_parts))]) if len_parts else np.zeros(1)
    boundaries = np.zeros(len(stream), np.uint8)
    boundaries[offsets[1:].astype(np.int64) - 1] = 1
    arrays = {
        "bytes": stream,
        "boundaries": boundaries,
        # No vocabulary entry spans the EOS byte, so the whole stream expands in one pass.
        "expanded": np.asarray(expander.expand(stream.tolist()), dtype),
        "tokens": (np.concatenate(token_parts) if token_parts else np.zeros(0)).astype(dtype),
        "token_offsets": offsets.astype(np.uint64),
        "doc_offsets": np.asarray(doc_tokens, np.uint64),
    }
    tmp = shard_dir.with_name(f"{shard_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", array)
    (tmp / "stats.json").write_text(json.dumps(stats.__dict__))
    os.replace(tmp, shard_dir)
    return stats


def _shards(records: Iterator[Record], size: int, limit: int | None) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for n, record in enumerate(records):
        if limit is not None and n >= limit:
            break
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_job(config: PrepareConfig, files: list[Path], vocab: SubwordVocab) -> None:
    """Write the job description, or check that an earlier partial run had the same one."""
    job = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tokenizer_sha256": vocab.sha256,
           "inputs": [[str(f.resolve()), f.stat().st_size] for f in files],
           "docs_per_shard": config.docs_per_shard, "max_documents": config.max_documents}
    file = config.out / "prepare.json"
    if file.is_file():
        old = json.loads(file.read_text())
        changed = [k for k in job if old.get(k) != job[k]]
        if changed:
            raise ConfigError(f"{file}: {config.out} was prepared with different {', '.join(changed)}; "
                              f"use a new --out directory (or delete it) to start over")
    else:
        _write_json_atomic(file, job)


def _write_json_atomic(file: Path, data: dict[str, Any]) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, file)


def _init_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    # A forked worker inherits the CLI's handlers, which raise on SIGTERM: then pool.terminate()
    # could stop a worker inside the pool's queue lock and leave the other waiting on it forever.
    # Workers die on SIGTERM and leave Ctrl-C to the parent, which ends the pool.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _usable_workers(asked: int) -> int:
    """At most one tokenizing process per CPU this process may run on: more only compete for the
    same cores (and each starts with a copy of the tokenizer: --workers 1000 took a minute for two
    documents). The output never depends on the number."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if asked > cpus:
        warn(f"--workers {asked}: this machine runs {cpus} processes at once; using {cpus}")
    return min(asked, cpus)


def prepare(config: PrepareConfig) -> dict[str, Any]:
    """Run (or resume) a prepare job; returns the meta.json contents."""
    if config.docs_per_shard < 1 or config.workers < 1:
        raise ConfigError("prepare: --docs-per-shard and --workers must be >= 1")
    files = resolve_inputs(config.inputs)
    vocab = SubwordVocab.load(config.tokenizer)
    try:
        config.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, a read-only or missing mount: one line, not a traceback
        what = "exists and is not a directory" if exc.errno == errno.EEXIST else \
            f"cannot create the output directory ({exc.strerror or exc})"
        raise ConfigError(f"{config.out}: {what}") from None
    _check_job(config, files, vocab)
    tok_dir = config.out / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    for name in SUBWORD_TOKENIZER_FILES:
        if (config.tokenizer / name).is_file() and not (tok_dir / name).is_file():
            shutil.copyfile(config.tokenizer / name, tok_dir / name)
    for stale in config.out.glob("shard-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)

    from tqdm import tqdm

    results: list[ShardStats] = []
    bar = tqdm(unit="doc", desc="prepare", disable=not config.progress, dynamic_ncols=True)
    workers = _usable_workers(config.workers)
    pool = multiprocessing.get_context("fork").Pool(workers, _init_worker) if workers > 1 else None
    pending: deque = deque()

    def finish_one() -> None:
        stats = pending.popleft().get()
        results.append(stats)
        bar.update(stats.records)

    try:
        shards = _shards(iter_records(files), config.docs_per_shard, config.max_documents)
        for index, records in enumerate(shards):
            shard_dir = config.out / f"shard-{index:05d}"
            if (shard_dir / "stats.json").is_file():  # done in an earlier run
                pending.append(_ResultOf(ShardStats(**json.loads((shard_dir / "stats.json").read_text()))))
            elif pool is None:
                pending.append(_ResultOf(process_shard(records, shard_dir, tok_dir)))
            else:
                pending.append(pool.apply_async(process_shard, (records, shard_dir, tok_dir)))
            if pool is None or len(pending) > 2 * workers:  # bounded read-ahead
                finish_one()
        while pending:
            finish_one()
        if pool is not None:  # every shard is done: let the workers exit on their own
            pool.close()
            pool.join()
            pool = None
    finally:
        bar.close()
        if pool is not None:  # an error or an interruption: stop the workers now
            pool.terminate()
            pool.join()
    meta = _build_meta(config, vocab, results)
    _write_json_atomic(config.out / "meta.json", meta)
    return meta


class _ResultOf:
    """A finished result with the AsyncResult interface, so the queue holds one kind of item."""

    def __init__(self, value: ShardStats) -> None:
        self.value = value

    def get(self) -> ShardStats:
        return self.value


def _build_meta(config: PrepareConfig, vocab: SubwordVocab, results: list[ShardStats]) -> dict[str, Any]:
    bad: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for stats in results:
        bad.update(stats.bad)
        for reason, where in stats.bad_examples.items():
            examples.setdefault(reason, []).extend(where)
    documents = sum(s.documents for s in results)
    tokens = sum(s.text_tokens for s in results)
    text_bytes = sum(s.text_bytes for s in results)
    dtype = id_dtype(vocab.vocab_size).name
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "tokenizer": {"source": str(config.tokenizer), "sha256": vocab.sha256, "vocab_size": vocab.vocab_size,
                      "eos_id": vocab.eos_id, "pad_id": vocab.pad_id},
        "boundary_mode": "end",
        "dtypes": {"bytes": "uint16", "boundaries": "uint8", "expanded": dtype, "tokens": dtype,
                   "token_offsets": "uint64", "doc_offsets": "uint64"},
        "counts": {"records": sum(s.records for s in results), "documents": documents,
                   "empty": sum(s.empty for s in results),
                   "bad": dict(sorted(bad.items())), "text_bytes": text_bytes, "text_tokens": tokens,
                   "stream_bytes": text_bytes + documents, "stream_tokens": tokens + documents},
        "bad_examples": {k: v[:BAD_EXAMPLES] for k, v in sorted(examples.items())},
        "shards": [{"name": f"shard-{i:05d}", "documents": s.documents, "tokens": s.text_tokens + s.documents}
                   for i, s in enumerate(results)],
        "inputs": [str(f) for f in config.inputs],
        "docs_per_shard": config.docs_per_shard,
        "max_documents": config.max_documents,
    }


def format_summary(meta: dict[str, Any]) -> str:
    """The one-screen end-of-run summary."""
    c = meta["counts"]
    per_token = c["text_bytes"] / c["text_tokens"] if c["text_tokens"] else 0.0
    lines = [
        f"documents      {c['documents']:,} (of {c['records']:,} records; {c['empty']:,} empty skipped)",
        f"bytes          {c['text_bytes']:,} UTF-8 bytes",
        f"subword tokens {c['text_tokens']:,} ({per_token:.3f} bytes per token)",
        f"shards         {len(meta['shards'])}",
    ]
    if c["bad"]:
        lines.append(f"bad documents  {sum(c['bad'].values()):,} (counted, not written):")
        for reason, n in c["bad"].items():
            lines.append(f"  {reason:16s} {n:,}  first at {', '.join(meta['bad_examples'].get(reason, []))}")
    else:
        lines.append("bad documents  0")
    return "\n".join(lines)

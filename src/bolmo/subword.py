"""Subword OLMo 2 / Olmo 3 models end to end: loading HF or OLMo-core directories, scoring in bits per byte,
and KV-cached generation with the same arguments as Bolmo's.

Bytes are the common currency with Bolmo: `score` divides nats by UTF-8 bytes, and generation
counts `max_new_bytes` in bytes. A subword model emits whole tokens, so generation runs until at
least `max_new_bytes` new bytes exist and then cuts the continuation to exactly that many bytes
(the cut may split a multi-byte character, which then decodes as U+FFFD, as a byte model's would).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from bolmo.checkpoint.safetensors_io import HFWeights
from bolmo.errors import CheckpointError, GenerationError, TokenizerError
from bolmo.kv_cache import KVCache, forward_cached
from bolmo.loading import materialize
from bolmo.model.olmo import OlmoForCausalLM
from bolmo.olmo_config import OlmoConfig
from bolmo.sampling import RowSampler, SamplingParams
from bolmo.score import ScoreResult
from bolmo.subword_tokenizer import SubwordTokenizer


def load_olmo(path: Path, olmo_core: bool, device: str | torch.device, dtype: torch.dtype) -> OlmoForCausalLM:
    """An OLMo 2 / Olmo 3 directory (HF Olmo2ForCausalLM / Olmo3ForCausalLM layout, or OLMo-core
    with `model_and_optim/`) as an OlmoForCausalLM in eval mode, with its tokenizer attached when
    the directory has a tokenizer.json."""
    if olmo_core:  # renamed to HF names, tensor by tensor, by the converter's own plan
        from bolmo.checkpoint.convert import plan_conversion

        plan = plan_conversion(path, "hf")
        if plan.source.family != "olmo":
            raise CheckpointError(f"{path}: a {plan.source.kind.value} checkpoint, not an OLMo 2 / Olmo 3 model")
        config = OlmoConfig.from_dict(plan.config, str(plan.source.config_path))
        tensors = ((t.name, plan.source.path, plan.produce(t)) for t in plan.tensors)
    else:
        config = OlmoConfig.from_file(path / "config.json")
        tensors = HFWeights(path).tensors()
    model = materialize(OlmoForCausalLM, config, tensors, device, dtype)
    model.tokenizer = SubwordTokenizer(path) if (path / "tokenizer.json").is_file() else None
    return model.eval()


def _tokenizer(model: OlmoForCausalLM) -> SubwordTokenizer:
    if model.tokenizer is None:
        raise TokenizerError("this model was loaded without a tokenizer (its directory has no tokenizer.json)")
    return model.tokenizer


# ---------------------------------------------------------------------------------- scoring
@torch.inference_mode()
def score_texts(model: OlmoForCausalLM, texts: list[str], batch_size: int = 8) -> list[ScoreResult]:
    """Score each text after the start id (right-padded batches, each row exact).

    `byte_logprobs` has one entry per UTF-8 byte like Bolmo's, but a subword model only gives
    whole-token probabilities: each token's log-probability sits at the token's last byte and the
    other bytes hold 0, so sums over any span of whole tokens (and `nats`) are exact.
    """
    tokenizer = _tokenizer(model)
    results: list[ScoreResult] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        ids, mask = tokenizer.batch(chunk, padding_side="right")
        ids, mask = ids.to(model.device), mask.to(model.device)
        hidden = model.model(ids, mask if not bool(mask.all()) else None)
        for row, text in enumerate(chunk):
            n = int(mask[row].sum())
            targets = ids[row, 1:n]
            # One row's logits at a time: [T, vocab] can be large for a 100k vocabulary.
            logprobs = torch.log_softmax(model.lm_head(hidden[row, : n - 1]).float(), dim=-1)
            token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
            n_bytes = len(text.encode("utf-8"))
            lengths = torch.tensor([len(tokenizer.decode_bytes([t])) for t in targets.tolist()], dtype=torch.long)
            ends = (lengths.cumsum(0) - 1).clamp(0, max(n_bytes - 1, 0))
            byte_lp = torch.zeros(n_bytes, dtype=torch.float32)
            if n_bytes:
                byte_lp.index_add_(0, ends, token_lp)
            results.append(ScoreResult(text=text, byte_logprobs=byte_lp, nats=float(-token_lp.double().sum()),
                                       n_bytes=n_bytes))
    return results


# ---------------------------------------------------------------------------------- decoding
@torch.inference_mode()
def decode_steps(model: OlmoForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 max_new_tokens: int, choose: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[torch.Tensor]:
    """Prefill left-padded prompts [B, T] once, then decode one token per step with a KV cache;
    `choose` turns last-position logits [B, V] into ids [B] (greedy: argmax). Yields each step's
    ids [B]; stopping is the caller's: it stops iterating when it is done.

    Each row's position ids start at 0 at its first real token, so a row decodes exactly as it
    would alone.
    """
    batch, length = input_ids.shape
    cache = KVCache.empty(model.model.layers.spec, batch, length + max_new_tokens, model.device, model.dtype)
    valid = attention_mask.bool()
    positions = valid.long().cumsum(-1) - 1  # padding gets -1 and is never visible to real tokens
    x = model.model.embed_tokens(input_ids)
    all_valid = torch.ones(batch, 1, dtype=torch.bool, device=model.device)
    next_position = positions[:, -1:] + 1
    for _ in range(max_new_tokens):
        hidden = forward_cached(model.model.layers, x, positions, valid, cache)
        logits = model.lm_head(model.model.norm(hidden[:, -1]))
        ids = choose(logits)
        yield ids
        x = model.model.embed_tokens(ids.unsqueeze(1))
        positions, valid = next_position, all_valid
        next_position = next_position + 1


class _Continuation:
    """One row's generated bytes: cut at the first stop string and at `max_new_bytes`, and (for
    streaming) hold back bytes that might still turn out to start a stop string."""

    def __init__(self, max_new_bytes: int, stops: list[bytes]) -> None:
        self.max_new_bytes = max_new_bytes
        self.stops = stops
        self.data = bytearray()
        self.done = max_new_bytes == 0
        self.taken = 0

    def add(self, piece: bytes) -> None:
        self.data += piece
        cut = min((i for s in self.stops if (i := self.data.find(s)) >= 0), default=None)
        if cut is not None:
            del self.data[cut:]
            self.done = True
        if len(self.data) >= self.max_new_bytes:
            del self.data[self.max_new_bytes :]
            self.done = True

    def take(self) -> bytes:
        """Bytes that can no longer change: all of them once done, else all but a possible stop prefix."""
        hold = 0 if self.done else max((len(s) - 1 for s in self.stops), default=0)
        end = max(len(self.data) - hold, self.taken)
        out = bytes(self.data[self.taken : end])
        self.taken = end
        return out


def _run(model: OlmoForCausalLM, prompts: list[str], max_new_bytes: int, params: SamplingParams,
         stop: str | list[str] | None) -> Iterator[list[_Continuation]]:
    """Decode all prompts, yielding the continuations after every step until each row is done
    (end-of-text, a stop string, or max_new_bytes)."""
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise GenerationError("prompts must be a non-empty list of strings")
    if not isinstance(max_new_bytes, int) or max_new_bytes < 0:
        raise GenerationError(f"max_new_bytes must be a non-negative integer, got {max_new_bytes!r}")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or not s for s in stops):
        raise GenerationError("stop strings must be non-empty strings")
    tokenizer = _tokenizer(model)
    rows = [_Continuation(max_new_bytes, [s.encode("utf-8") for s in stops]) for _ in prompts]
    if max_new_bytes == 0:
        yield rows
        return
    ids, mask = tokenizer.batch(prompts, padding_side="left")
    end_ids = set(model.config.eos_token_ids) | ({tokenizer.eos_id} if tokenizer.eos_id is not None else set())
    # Never produce ids the tokenizer cannot decode (the padding rows of a rounded-up vocabulary).
    vocab = model.config.vocab_size
    banned = torch.ones(vocab, dtype=torch.bool)
    known = min(vocab, len(tokenizer))
    banned[:known] = ~tokenizer.has_token[:known]
    banned = banned.to(model.device)
    sampler = RowSampler(params, len(prompts), model.device)  # row r samples as if alone with seed + r
    # Every token except a special one adds at least one byte, so max_new_bytes tokens suffice.
    steps = decode_steps(model, ids.to(model.device), mask.to(model.device), max_new_bytes,
                         lambda logits: sampler(logits, banned))
    for step_ids in steps:
        for row, token in zip(rows, step_ids.tolist()):
            if row.done:
                continue
            if token in end_ids:
                row.done = True
            else:
                row.add(tokenizer.decode_bytes([token]))
        yield rows
        if all(row.done for row in rows):
            break
    for row in rows:  # ran out of steps (only after special tokens that add no bytes)
        row.done = True
    yield rows


def generate(model: OlmoForCausalLM, prompts: list[str], max_new_bytes: int = 256, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop: str | list[str] | None = None) -> list[str]:
    """The continuations of `prompts` (without the prompts), at most `max_new_bytes` bytes each."""
    params = SamplingParams(temperature, top_k, top_p, seed)
    *_, rows = _run(model, prompts, max_new_bytes, params, stop)
    return [bytes(row.data).decode("utf-8", errors="replace") for row in rows]


def stream(model: OlmoForCausalLM, prompt: str, max_new_bytes: int = 256, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop: str | list[str] | None = None) -> Iterator[str]:
    """The continuation of one prompt as it is produced, in pieces that never split a character."""
    params = SamplingParams(temperature, top_k, top_p, seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for (row,) in _run(model, [prompt], max_new_bytes, params, stop):
        piece = decoder.decode(row.take(), final=row.done)
        if piece:
            yield piece

"""Subword OLMo 2 / Olmo 3 models end to end: loading HF or OLMo-core directories, scoring in bits per byte,
and KV-cached generation with the same arguments as Bolmo's.

Bytes are the common currency with Bolmo: `score` divides nats by UTF-8 bytes, and generation
counts `max_new_bytes` in bytes. A subword model emits whole tokens, so generation runs until at
least `max_new_bytes` new bytes exist and then cuts the continuation to exactly that many bytes
(the cut may split a multi-byte character, which then decodes as U+FFFD, as a byte model's would).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from bolmo.checkpoint.safetensors_io import HFWeights
from bolmo.generation.continuation import Continuation, GenerateOptions, check_prompts, text_pieces
from bolmo.errors import CheckpointError, TokenizerError
from bolmo.generation.kv_cache import KVCache, prefill
from bolmo.loading import materialize
from bolmo.model.olmo import OlmoForCausalLM
from bolmo.olmo.config import OlmoConfig
from bolmo.generation.sampling import RowSampler
from bolmo.scoring import ScoreResult
from bolmo.olmo.tokenizer import SubwordTokenizer


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

    Each row's position ids start at 0 at its first real token, and only its real tokens enter
    the cache, so a row attends to exactly the keys, at the positions, it would have alone.
    """
    if max_new_tokens < 1:
        return
    inner = model.model
    valid = attention_mask.bool()
    positions = valid.long().cumsum(-1) - 1  # padding gets -1 and is never visible to real tokens
    hidden, keys, values = prefill(inner.layers, inner.embed_tokens(input_ids), positions, valid)
    batch, length = input_ids.shape
    counts = valid.sum(-1).tolist()  # row r's real tokens are its last counts[r] columns

    def real(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        return [[t[r : r + 1, :, length - n :] for t in tensors] for r, n in enumerate(counts)]

    cache = KVCache.from_rows(inner.layers, real(keys), real(values), model.device, model.dtype)
    every_row = list(range(batch))
    for step in range(max_new_tokens):
        if step:
            hidden = cache.step(inner.embed_tokens(ids.unsqueeze(1)), None, every_row)
        ids = choose(model.lm_head(inner.norm(hidden[:, -1])))
        yield ids


def _run(model: OlmoForCausalLM, prompts: Sequence[str], options: GenerateOptions) -> Iterator[list[Continuation]]:
    """Decode all prompts, yielding the continuations after every step until each row is done
    (end-of-text, a stop string, or max_new_bytes)."""
    check_prompts(prompts)
    tokenizer = _tokenizer(model)
    rows = [Continuation(options) for _ in prompts]
    if options.max_new_bytes == 0:
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
    sampler = RowSampler(options.sampling, len(prompts), model.device)  # row r samples as if alone with seed + r
    # Every token except a special one adds at least one byte, so max_new_bytes tokens suffice.
    steps = decode_steps(model, ids.to(model.device), mask.to(model.device), options.max_new_bytes,
                         lambda logits: sampler(logits, banned))
    for step_ids in steps:
        for row, token in zip(rows, step_ids.tolist()):
            if row.done:
                continue
            if token in end_ids:
                row.finish("eos")
            else:
                row.add(tokenizer.decode_bytes([token]))
        yield rows
        if all(row.done for row in rows):
            break
    for row in rows:  # ran out of steps (only after special tokens that add no bytes)
        if not row.done:
            row.finish("length")
    yield rows


def generate(model: OlmoForCausalLM, prompts: list[str], max_new_bytes: int = 256, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop: str | list[str] | None = None) -> list[str]:
    """The continuations of `prompts` (without the prompts), at most `max_new_bytes` bytes each."""
    options = GenerateOptions.build(max_new_bytes, temperature, top_k, top_p, seed, stop)
    *_, rows = _run(model, prompts, options)
    return [row.text for row in rows]


def stream(model: OlmoForCausalLM, prompt: str, max_new_bytes: int = 256, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop: str | list[str] | None = None) -> Iterator[str]:
    """The continuation of one prompt as it is produced, in pieces that never split a character."""
    options = GenerateOptions.build(max_new_bytes, temperature, top_k, top_p, seed, stop)
    yield from text_pieces(row for (row,) in _run(model, [prompt], options))

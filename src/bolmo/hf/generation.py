"""`generate()` with transformers' arguments on bolmo's cached byte engine.

transformers' meaning throughout: `max_new_tokens` counts new bytes (ids), the result is the input
ids followed by the new ids (an ending EOS included, finished rows padded with `pad_token_id`),
`do_sample=False` is greedy, `stop_strings` end a row once the sequence ends with one (it is kept),
`eos_token_id` ids end a row once generated (kept too; the tokenizer's EOS always ends one),
streamers get the prompt and then one id per row and step. Sampling draws its seed from torch's
global generator, so `torch.manual_seed` makes it reproducible. Left- or right-padded batches come
with their `attention_mask`; each row is decoded exactly as its prompt alone.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from bolmo.config import BYTE_OFFSET, PLAIN_VOCAB
from bolmo.errors import GenerationError
from bolmo.hf.engine import byte_steps

# Settings the byte engine cannot honour, with the values that mean "off" (transformers 4.x defaults;
# 5.x defaults them to None, which is off too). Refused rather than ignored: a caller who sets one
# expects its effect.
_UNSUPPORTED = {"num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                "min_new_tokens": 0, "min_length": 0, "min_p": 0.0, "typical_p": 1.0, "penalty_alpha": 0.0,
                "return_dict_in_generate": False, "output_scores": False, "output_logits": False,
                "bad_words_ids": None, "force_words_ids": None, "suppress_tokens": None,
                "begin_suppress_tokens": None, "sequence_bias": None, "forced_bos_token_id": None,
                "forced_eos_token_id": None, "guidance_scale": 1.0, "encoder_repetition_penalty": 1.0,
                "exponential_decay_length_penalty": None, "renormalize_logits": False, "remove_invalid_values": False,
                "max_time": None, "eta_cutoff": 0.0, "epsilon_cutoff": 0.0, "top_h": None, "diversity_penalty": 0.0,
                "num_beam_groups": 1, "watermarking_config": None, "prompt_lookup_num_tokens": None,
                "token_healing": False, "dola_layers": None}
# Keyword arguments transformers callers pass that need nothing here (the processor lists only when empty).
_IGNORED = {"tokenizer", "use_cache", "synced_gpus", "logits_processor", "stopping_criteria"}


def generate(model, input_ids: torch.Tensor | None, generation_config, streamer, kwargs: dict[str, Any]) -> torch.Tensor:
    if input_ids is None:
        input_ids = kwargs.pop("input_ids", None)
    if input_ids is None:
        raise GenerationError("generate() needs input_ids")
    if model.core.tokenizer is None:
        raise GenerationError("generate(): this model has no subword tokenizer (built with from_config?): load it "
                              "with from_pretrained or bolmo.load")
    attention_mask = kwargs.pop("attention_mask", None)
    for name in _IGNORED & set(kwargs):
        value = kwargs.pop(name)
        if name in ("logits_processor", "stopping_criteria") and value:
            raise GenerationError(f"generate(): {name} is not supported by bolmo's byte engine")
    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    unused = config.update(**kwargs)
    if unused:
        raise GenerationError(f"generate(): unknown argument(s) {', '.join(sorted(unused))}")
    for name, off in _UNSUPPORTED.items():
        value = getattr(config, name, None)
        if value is not None and value != off:
            raise GenerationError(f"generate(): {name}={value!r} is not supported by bolmo's byte engine")

    prompts = prompt_bytes(input_ids, attention_mask, model.config.bos_token_id)
    max_new = config.max_new_tokens
    if max_new is None:
        max_new = max((config.max_length or 20) - input_ids.shape[1], 0)
    sampling = sampling_arguments(config)
    stops = config.stop_strings
    stops = [s.encode("utf-8") for s in ([stops] if isinstance(stops, str) else stops or [])]
    pad = config.pad_token_id if config.pad_token_id is not None else model.config.pad_token_id
    eos = model.core.tokenizer.eos_id
    ends = end_ids(config.eos_token_id)  # the caller's EOS ids (byte ids among them end a row after that byte)

    if streamer is not None:
        streamer.put(input_ids.cpu())
    # As transformers' stop-string check: does the sequence (prompt included) end with a stop string?
    longest = max((len(s) for s in stops), default=0)
    tails = [p[-longest:] if stops else b"" for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    steps = byte_steps(model.core, prompts, max_new, **sampling)
    next(steps)  # the prefill
    for rows in steps:
        step = []
        for r, row in enumerate(rows):
            if done[r]:
                step.append(pad)
                continue
            token = row.data[len(new[r])] + BYTE_OFFSET if len(row.data) > len(new[r]) else eos
            new[r].append(token)
            step.append(token)
            if stops and token != eos:
                tails[r] = (tails[r] + bytes((token - BYTE_OFFSET,)))[-longest:]
            done[r] = (row.eos or token in ends or len(new[r]) >= max_new
                       or any(tails[r].endswith(s) for s in stops))
        if streamer is not None:
            streamer.put(torch.tensor(step))
        if all(done):
            break
    steps.close()
    if streamer is not None:
        streamer.end()
    width = max(len(ids) for ids in new)
    out = torch.full((len(new), width), pad, dtype=torch.long)
    for r, ids in enumerate(new):
        out[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return torch.cat([input_ids.cpu(), out], dim=1).to(input_ids.device)


def end_ids(eos_token_id: int | list[int] | None) -> set[int]:
    """transformers' `eos_token_id` (one id or a list) as the set of plain ids that end a row: a
    fused id (>= 260: a byte that ends a patch) stands for its byte. The tokenizer's EOS always
    ends a row too; any other id is kept in the output, as transformers keeps an EOS."""
    ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise GenerationError(f"generate(): eos_token_id={eos_token_id!r} must be an id or a list of ids")
    return {i - PLAIN_VOCAB if i >= PLAIN_VOCAB else i for i in ids}


def sampling_arguments(config) -> dict[str, Any]:
    """The engine's sampling arguments for a GenerationConfig: none (greedy) unless do_sample; the
    seed comes from torch's global generator (row r then samples with seed + r)."""
    if not config.do_sample:
        return {}
    top_p = config.top_p if config.top_p is not None and config.top_p < 1.0 else None
    return dict(temperature=1.0 if config.temperature is None else float(config.temperature),
                top_k=config.top_k or None, top_p=top_p, seed=int(torch.randint(0, 2**62, ())))


def prompt_bytes(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, bos_id: int) -> list[bytes]:
    """Each row's prompt as bytes: padding (by the mask) and a leading BOS removed."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    prompts = []
    for row, keep in zip(input_ids.tolist(), mask.tolist()):
        ids = [i for i, k in zip(row, keep) if k]
        if ids and ids[0] == bos_id:
            ids = ids[1:]
        special = [i for i in ids if not BYTE_OFFSET <= i < PLAIN_VOCAB]
        if special:
            raise GenerationError(f"input_ids: id {special[0]} is not a byte id (byte ids are {BYTE_OFFSET}..."
                                  f"{PLAIN_VOCAB - 1}; only a leading BOS {bos_id} may precede them)")
        prompts.append(bytes(i - BYTE_OFFSET for i in ids))
    return prompts

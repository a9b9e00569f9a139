"""Shared helpers of the eval tests: olmes' hf_bolmo loglikelihood computed by hand, and a tiny
subword OLMo 2 model on disk."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from olmo_helpers import build_hf_model, save_hf_model


def tiny_olmo_dir(directory: Path) -> Path:
    if not (directory / "config.json").is_file():
        save_hf_model(build_hf_model("olmo2"), directory)
    return directory


def hand_loglikelihood(model, context: str, continuation: str, max_length: int | None = None) -> tuple[float, bool]:
    """BOS + context bytes + continuation bytes + "\\n\\n", the model on all but the last id,
    p(byte) = p(id) + p(id + 260) from a plain softmax, log-probs of the continuation summed.
    `max_length`: at most that many ids fed, the context's first bytes dropped to fit."""
    ctx = list(context.encode("utf-8"))
    cont = list(continuation.encode("utf-8"))
    if max_length is not None:
        ctx = ctx[max(0, len(ctx) + len(cont) + 2 - max_length):]  # BOS + ctx + cont + 2 - 1 ids fed
    ids = [1] + [b + 4 for b in ctx + cont] + [ord("\n") + 4] * 2
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).logits[0].double()
    probs = torch.softmax(logits, dim=-1)
    total, greedy = 0.0, True
    for k, byte in enumerate(cont):
        pos = len(ctx) + k  # logits at position t predict id t + 1; id 0 is BOS
        folded = probs[pos, :260] + probs[pos, 260:]
        total += math.log(float(folded[byte + 4]))
        greedy &= int(folded.argmax()) == byte + 4
    return total, greedy

"""`bolmo merge`: post-training without training ("instructify", docs/training-reference.md §7).

Given a Bolmo model M, the subword model B it was byteified from, and a post-trained descendant I
of B (same architecture and tokenizer, e.g. an Instruct model), every Bolmo tensor that I also has
under the same (HF) name and shape becomes

    M[k] + alpha * (I[k] - B[k])        (computed in float32, cast back to M[k]'s dtype)

In practice that is every global block tensor (`model.layers.*`) and the final norm
`model.norm.weight` (the byte LM head's norm has the subword final norm's shape and receives its
delta). `lm_head.weight` has the same name but a different shape (520 byte rows vs the subword
vocabulary) and is skipped, as the reference does. Tensors only Bolmo has (local encoder/decoder,
boundary predictor, byte and subword embeddings) are copied unchanged. With
`instructify_embeddings`, the subword embedding table also receives the first rows of the input
embeddings' delta.

Anything else that does not line up is an error listing every problem, raised before anything is
written: B and I must hold the same names and shapes, and every global tensor of M must be in I
with M's shape (the reference would silently skip a block of the wrong shape).

Inputs may be HF or OLMo-core directories; they are read lazily, one tensor at a time, and the
output (HF, with M's config and subword tokenizer) is written tensor by tensor and appears atomically.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bolmo.checkpoint.atomic import check_destination
from bolmo.checkpoint.convert import ConversionPlan, PlannedTensor, Progress, execute, plan_conversion
from bolmo.checkpoint.inventory import differences, listed
from bolmo.errors import BolmoError, CheckpointError

SKIPPED_FOR_SHAPE = ("lm_head.weight",)  # the byte head: 520 rows, not the subword vocabulary
SUBWORD_EMBEDDING = "model.local_encoder.subword_embedding.weight"
INPUT_EMBEDDING = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"


def is_global(name: str) -> bool:
    """The tensors that must be merged: global blocks and the final norm."""
    return name.startswith("model.layers.") or name == FINAL_NORM


@dataclass
class MergeResult:
    destination: Path
    alpha: float
    merged: list[str]
    copied: list[str]
    notes: list[str] = field(default_factory=list)  # tensors skipped or unused, and why
    seconds: float = 0.0


def merge(bolmo: str | Path, base: str | Path, post: str | Path, out: str | Path, alpha: float = 1.0,
          instructify_embeddings: bool = False, overwrite: bool = False,
          progress: Progress | None = None) -> MergeResult:
    """Write `bolmo + alpha * (post - base)` (per the rules above) to `out` as an HF checkpoint."""
    start = time.perf_counter()
    if not math.isfinite(alpha):
        raise BolmoError(f"alpha must be a finite number, got {alpha}")
    out = Path(out)
    check_destination(out, overwrite, sources=[bolmo, base, post])
    plans = {"bolmo": plan_conversion(bolmo, "hf"), "base": plan_conversion(base, "hf"),
             "post": plan_conversion(post, "hf")}
    for role, family in (("bolmo", "bolmo"), ("base", "olmo"), ("post", "olmo")):
        source = plans[role].source
        if source.family != family:
            wanted = "a Bolmo model" if family == "bolmo" else "an OLMo 2 / Olmo 3 subword model"
            raise CheckpointError(f"--{role} {source.path}: a {source.kind.value} checkpoint; expected {wanted}")
    tensors, result = _plan_merge(plans, alpha, instructify_embeddings)
    bolmo_plan = plans["bolmo"]
    output = ConversionPlan(bolmo_plan.source, "hf", tensors, bolmo_plan.config, bolmo_plan.tokenizer_dir)
    result.destination = execute(output, out, overwrite=overwrite, progress=progress).destination
    result.seconds = time.perf_counter() - start
    return result


def _plan_merge(plans: dict[str, ConversionPlan], alpha: float, instructify_embeddings: bool
                ) -> tuple[list[PlannedTensor], MergeResult]:
    """The output tensors (merged ones carry the merge as their transform) and the summary;
    raises listing every problem before any tensor is read."""
    m, b, p = ({t.name: t for t in plans[role].tensors} for role in ("bolmo", "base", "post"))
    problems = differences({n: (t.shape,) for n, t in p.items()}, {n: (t.shape,) for n, t in b.items()},
                           "--post", "--base")
    result = MergeResult(Path(), alpha, [], [])
    out: list[PlannedTensor] = []
    if instructify_embeddings and SUBWORD_EMBEDDING not in m:
        problems.append(f"--instructify-embeddings: the Bolmo model has no {SUBWORD_EMBEDDING}")
    for name, t in m.items():
        if name == SUBWORD_EMBEDDING and instructify_embeddings:
            if INPUT_EMBEDDING not in p or p[INPUT_EMBEDDING].shape[0] < t.shape[0] \
                    or p[INPUT_EMBEDDING].shape[1:] != t.shape[1:]:
                found = list(p[INPUT_EMBEDDING].shape) if INPUT_EMBEDDING in p else "nothing"
                problems.append(f"--instructify-embeddings: {name} is {list(t.shape)}; --post's "
                                f"{INPUT_EMBEDDING} must have at least as many rows and the same width, found {found}")
                continue
            delta_name, rows = INPUT_EMBEDDING, t.shape[0]
        elif name in p and p[name].shape == t.shape:
            delta_name, rows = name, None
        elif name in p and name in SKIPPED_FOR_SHAPE:
            result.notes.append(f"skipped {name}: Bolmo {list(t.shape)} vs subword {list(p[name].shape)} "
                                "(the byte LM head is not the subword LM head)")
            out.append(t)
            result.copied.append(name)
            continue
        elif name in p:
            problems.append(f"{name}: Bolmo has {list(t.shape)}, --post has {list(p[name].shape)}")
            continue
        elif is_global(name):
            problems.append(f"{name}: in the Bolmo model but not in --post (global transformer tensors are merged)")
            continue
        else:
            out.append(t)
            result.copied.append(name)
            continue
        if delta_name in b:  # otherwise `differences` has reported it
            merge_fn = _merge_fn(name, plans["base"], b[delta_name], plans["post"], p[delta_name], alpha, rows)
            out.append(PlannedTensor(name, t.source, t.shape, t.dtype, _then(t.transform, merge_fn)))
            result.merged.append(name)
    if not instructify_embeddings and INPUT_EMBEDDING in p:
        result.notes.append(f"not used: {INPUT_EMBEDDING} of --base/--post (pass --instructify-embeddings to "
                            f"merge its delta into {SUBWORD_EMBEDDING})")
    if problems:
        raise CheckpointError("cannot merge; nothing was written:" + listed(problems))
    return out, result


def _merge_fn(name: str, base: ConversionPlan, base_t: PlannedTensor, post: ConversionPlan, post_t: PlannedTensor,
              alpha: float, rows: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """M -> M + alpha * (post - base), in float32, reading base and post only when called. A
    non-finite result names its cause: a source tensor, or alpha overflowing the dtype."""

    def apply(tensor: torch.Tensor) -> torch.Tensor:
        delta = post.produce(post_t).float() - base.produce(base_t).float()
        if rows is not None:
            delta = delta[:rows]
        merged = (tensor.float() + alpha * delta).to(tensor.dtype)
        if not bool(torch.isfinite(merged).all()):
            if not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"--bolmo: tensor {name!r} holds NaN or infinite values")
            if not bool(torch.isfinite(delta).all()):
                raise CheckpointError(f"--post minus --base: tensor {post_t.name!r} holds NaN or infinite values "
                                      "(in one of them, or their difference overflows float32)")
            raise CheckpointError(f"{name}: bolmo + alpha * (post - base) overflows {tensor.dtype} with alpha "
                                  f"{alpha:g}; the sources are finite (choose a smaller alpha)")
        return merged

    return apply


def _then(first: Callable[[torch.Tensor], torch.Tensor] | None,
          second: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Compose the Bolmo source's own transform (e.g. vocabulary padding) with the merge."""
    return second if first is None else (lambda tensor: second(first(tensor)))

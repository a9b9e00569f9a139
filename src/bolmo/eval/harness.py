"""lm-evaluation-harness model `bolmo`: any model `bolmo.load` reads, scored by bolmo's engine.

    lm_eval --model bolmo --model_args pretrained=PATH,dtype=bfloat16 --tasks hellaswag
    (after `import bolmo.eval`, or through `bolmo eval harness`)

Model arguments are those of lm-eval's `hf` model that apply: `pretrained` (directory or
downloaded Hub id; omitted: the bundled default model), `batch_size` ("auto" means the default),
`device`, `dtype`, `max_length` (ids per row; longer requests lose context from the left), plus
`window` / `overlap` for `loglikelihood_rolling` (see bolmo.eval.rolling). Any other name is an
error.
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from bolmo.errors import BolmoError
from bolmo.eval.engine import Scorer
from bolmo.eval.rolling import model_window, score_documents

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_BYTES = 256
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "auto": torch.float32}


MODEL_ARGUMENTS = ("pretrained", "batch_size", "device", "dtype", "max_length", "window", "overlap")
LM_EVAL_EXTRAS = frozenset({"max_batch_size"})  # what lm-eval itself adds to the model arguments


def check_model_arguments(names) -> None:
    """BolmoError naming model arguments the `bolmo` model does not take (a typo such as
    `max_lenght` must not run an evaluation without the setting it meant)."""
    unknown = sorted(set(names) - set(MODEL_ARGUMENTS) - LM_EVAL_EXTRAS)
    if unknown:
        raise BolmoError(f"model argument {', '.join(unknown)}: unknown; the bolmo model takes "
                         f"{', '.join(MODEL_ARGUMENTS)}")


def _int_or_default(value: Any, default: int, name: str) -> int:
    if value is None or value == "auto" or (isinstance(value, str) and value.startswith("auto")):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BolmoError(f"model argument {name}={value!r}: expected an integer") from None
    if number < 1:
        raise BolmoError(f"model argument {name}={value!r}: must be at least 1")
    return number


@register_model("bolmo")
class BolmoLM(LM):
    def __init__(self, pretrained: str | None = None, batch_size: int | str | None = None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, max_length: int | None = None,
                 window: int | None = None, overlap: int | None = None, model=None, **extra: Any) -> None:
        super().__init__()
        check_model_arguments(extra)
        if isinstance(dtype, str) and dtype not in DTYPES:
            raise BolmoError(f"model argument dtype={dtype!r}: choose from {', '.join(DTYPES)}")
        if model is None:
            from bolmo.loading import load

            dtype = DTYPES[dtype] if isinstance(dtype, str) else (dtype or torch.float32)
            model = load(pretrained or None, device=device or "cpu", dtype=dtype)
        self.model = model
        self.scorer = Scorer(model, _int_or_default(batch_size, DEFAULT_BATCH_SIZE, "batch_size"),
                             None if max_length in (None, "auto") else _int_or_default(max_length, 0, "max_length"))
        self.window, self.overlap = model_window(model, None if window is None else int(window),
                                                 None if overlap is None else int(overlap))

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = self.scorer.loglikelihood([tuple(r.args[:2]) for r in requests])
        return [(r.logprob, r.is_greedy) for r in results]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        docs = score_documents(self.scorer, [r.args[0] for r in requests], self.window, self.overlap)
        return [d.logprob for d in docs]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests with equal generation arguments decode together (a batch per group)."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        outputs: list[str] = [""] * len(requests)
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1])
            until = kwargs.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            options = {"max_new_bytes": int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_BYTES)),
                       "stop": until or None}
            if kwargs.pop("do_sample", False) or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                options.update(temperature=float(kwargs.get("temperature", 1.0) or 1.0),
                               top_k=kwargs.get("top_k"), top_p=kwargs.get("top_p"), seed=kwargs.get("seed", 0))
            for start in range(0, len(indices), self.scorer.batch_size):
                chunk = indices[start : start + self.scorer.batch_size]
                texts = self.model.generate([requests[i].args[0] for i in chunk], **options)
                for i, text in zip(chunk, texts):
                    outputs[i] = text
        return outputs

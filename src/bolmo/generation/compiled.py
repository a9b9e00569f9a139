"""The decode step's functions, eager or compiled with `torch.compile`.

Compiling turns the whole decode step (encoder step, the global blocks' step when a row closed a
patch, decoder step and LM head: StepKernels.local_step and patch_step) into one graph of fused
kernels (inductor's C++ on a CPU, Triton + CUDA graphs on a GPU), which removes most of the
per-operation dispatch cost of a step: one graph call per byte. It costs a one-off compilation
(tens of seconds on a small CPU; inductor's on-disk cache makes later processes faster), so it
pays off for long generations, evaluations and servers, not for a single short command; it is
therefore opt-in (`BOLMO_COMPILE=1`, or `compile=True`). Where compilation is unavailable (no C++
compiler, an unsupported platform) the step runs eagerly after a one-line notice. The compiled
global step runs every row and attends over a multiple of 64 cache slots, so its shapes change
only every 64 patches (bolmo.generation.kv_cache.KVCache.step_inputs).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bolmo.config import env_switch
from bolmo.generation.fused_step import StepKernels, kernels_for

log = logging.getLogger("bolmo")

COMPILE_ENV = "BOLMO_COMPILE"  # "1": compile the decode step by default


@dataclass
class StepFunctions:
    """What a decode step calls: the fused kernels and their whole-step functions
    (StepKernels.local_step and patch_step, eager or compiled)."""

    fused: StepKernels
    local_step: Callable[..., torch.Tensor]
    patch_step: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    # With some rows closing a patch, the global step runs every row, branch-free (see
    # StepKernels.patch_step): what compiled steps need; eager steps compute only the closing rows.
    every_row: bool
    compiled: bool  # one graph per step: worth the caller's threads at any size (bolmo_engine.cpu_threads)
    eager: StepFunctions | None = None  # compiled ones: the same model's eager functions (large batches)


class _CompiledOrEager:
    """A torch.compile'd function that falls back to its eager version for good, with one
    notice, when compilation fails (the failure happens at the first call, before anything runs)."""

    def __init__(self, fn: Callable[..., torch.Tensor], mode: str | None, failed: list[str]) -> None:
        self.eager = fn
        self.fn = torch.compile(fn, mode=mode, dynamic=None)
        # Shared by the functions of one model: once one has failed to compile (no C++ compiler), the
        # others run eagerly at once, without paying for a second failed compilation or notice.
        self.failed = failed

    def __call__(self, *args):
        if self.failed and self.fn is not self.eager:
            self.fn = self.eager
        try:
            return self.fn(*args)
        except Exception as error:  # noqa: BLE001 - any compiler failure means "run eagerly"
            if self.fn is self.eager:
                raise
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if not self.failed:
                log.warning("bolmo: torch.compile is unavailable here (%s); decoding without it", reason[:200])
            self.failed.append(reason)
            self.fn = self.eager
            return self.fn(*args)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # StepKernels -> StepFunctions


def compile_by_default() -> bool:
    return env_switch(COMPILE_ENV, False)


def step_functions(model, compile: bool | None = None) -> StepFunctions:
    """The step functions for `model`: its fused kernels, compiled when `compile` (None: the
    BOLMO_COMPILE environment variable) asks for it. Compiled functions are kept per set of fused
    weights, so compilation (and its warm-up) is paid once per model and process."""
    if not (compile_by_default() if compile is None else compile):
        kernels = kernels_for(model)
        return StepFunctions(kernels, kernels.local_step, kernels.patch_step, False, False)
    kernels = kernels_for(model, for_compile=True)
    functions = _COMPILED.get(kernels)
    if functions is None:
        # CUDA graphs remove the launch overhead on a GPU; inductor's C++ kernels on a CPU.
        mode = "reduce-overhead" if model.device.type == "cuda" else None
        failed: list[str] = []
        functions = StepFunctions(kernels, _CompiledOrEager(kernels.local_step, mode, failed),
                                  _CompiledOrEager(kernels.patch_step, mode, failed), True, True,
                                  step_functions(model, compile=False))
        _COMPILED[kernels] = functions
    return functions

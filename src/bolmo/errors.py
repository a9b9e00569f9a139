"""One exception family for everything a user can get wrong.

The CLI turns any `BolmoError` into a one-line message and exit code 2, so every message must name
the file, tensor or field at fault on its own.
"""

from __future__ import annotations

import os
import sys
import warnings


class BolmoError(Exception):
    """Base class: a problem with the user's input, not a bug in bolmo."""


class ConfigError(BolmoError):
    """A config.json (or training YAML) field is missing, unknown, malformed or unsupported."""


class CheckpointError(BolmoError):
    """A checkpoint file is missing, truncated, or holds tensors that do not fit the model."""


class TokenizerError(BolmoError):
    """A subword tokenizer cannot be found or read."""


class GenerationError(BolmoError):
    """Invalid generation arguments (empty prompt list, bad max_new_bytes, top_p out of range...)."""


class ServeError(BolmoError):
    """`bolmo serve` cannot start (no chat template where one is needed, a bad option)."""


class ScoringError(BolmoError):
    """Invalid scoring arguments, or a model whose outputs cannot be a score (NaN)."""


class InputError(BolmoError, ValueError):
    """Tensors a model's forward cannot take (shape, dtype, ids outside the vocabulary). Also a
    ValueError: forward raised plain ValueErrors before, and callers catching those keep working."""


class DeviceError(BolmoError):
    """A torch device that does not exist or that this build of torch cannot use."""


class BolmoWarning(UserWarning):
    """Something the user should know about a result that is still valid; the CLI prints one line."""


class ContextWarning(BolmoWarning):
    """An input was cut to fit the model's positions (the warning says how much was kept)."""


class PromptCutWarning(ContextWarning):
    """A generation prompt was cut to fit the model's positions; `index` is the prompt's place in
    the call, so a caller that batches its own items (CUTE) can say which were cut."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_WRAPPERS = ("contextlib", "torch.utils._contextlib")  # decorators between a caller and bolmo's code


def warn(message: str | Warning, category: type[Warning] = BolmoWarning) -> None:
    """warnings.warn attributed to the user's line: the first caller outside bolmo (and outside
    context-manager decorators), whichever entry point led here. (Python 3.12's
    `skip_file_prefixes` does this; 3.11 has no such option.) A Warning instance is its own category."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename.startswith(_PACKAGE)
                                 or frame.f_globals.get("__name__") in _WRAPPERS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)

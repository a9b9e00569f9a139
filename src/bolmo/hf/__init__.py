"""Bolmo inside transformers, without remote code.

After `import bolmo`, the first import of transformers registers bolmo's classes for model_type
"bolmo" (`AutoConfig`, `AutoModelForCausalLM`, `AutoTokenizer`); when transformers is already
imported, `import bolmo` registers them at once. transformers is never imported by bolmo itself,
so bolmo works without it and `import bolmo` stays fast.

Why registration wins over a repo's `auto_map` without `trust_remote_code`: transformers (4.57 and
5.x alike) resolves `trust_remote_code=None` to False when the model type has local (registered)
code, and then takes the registered classes. With `trust_remote_code=True`, 4.57 runs the remote
code; 5.x still takes registered config and model classes that live outside transformers.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

_REGISTERED = False


def register() -> None:
    """Register bolmo's config, model and tokenizer classes with transformers' Auto classes
    (idempotent; imports transformers)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from bolmo.hf.configuration import BolmoHFConfig
    from bolmo.hf.modeling import BolmoForCausalLM
    from bolmo.hf.tokenization import BolmoTokenizer

    AutoConfig.register(BolmoHFConfig.model_type, BolmoHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(BolmoHFConfig, BolmoForCausalLM, exist_ok=True)
    AutoTokenizer.register(BolmoHFConfig, slow_tokenizer_class=BolmoTokenizer, exist_ok=True)
    _REGISTERED = True


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds `transformers` with the other finders and makes its loader call `register()` right
    after the module has run (a one-shot post-import hook)."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            exec_module = spec.loader.exec_module

            def exec_then_register(module) -> None:
                exec_module(module)
                try:
                    register()
                except Exception as exc:  # never break the user's `import transformers`
                    warnings.warn(f"bolmo could not register its classes with transformers: {exc!r}", stacklevel=2)

            spec.loader.exec_module = exec_then_register
        return spec


def register_when_imported() -> None:
    """`register()` now if transformers is imported, else right after it is."""
    if "transformers" in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())

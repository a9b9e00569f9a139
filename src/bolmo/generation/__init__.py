"""Generation for every model: one decoding loop (`driver`) over an engine interface (`engine`)
that Bolmo (`bolmo_engine`) and subword OLMo models (`olmo_engine`) implement, with sampling,
stop strings, streaming and the KV cache shared."""

from bolmo.generation.continuation import GenerateOptions
from bolmo.generation.driver import Generation, decode, generate, generate_ids, stream

__all__ = ["GenerateOptions", "Generation", "decode", "generate", "generate_ids", "stream"]

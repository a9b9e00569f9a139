"""Generation for every model: sampling, stop strings, streaming, KV cache and the decoding engines."""

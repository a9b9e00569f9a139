"""bolmo: byte-level language models of the Bolmo family."""

__version__ = "0.1.0"

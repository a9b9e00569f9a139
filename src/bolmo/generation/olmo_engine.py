"""The decoding engine of a subword OLMo 2 / Olmo 3 model (`bolmo.model.olmo.OlmoForCausalLM`).

Bytes are the common currency with Bolmo: the loop counts `max_new_bytes` in bytes, so a subword
row runs until at least that many new bytes exist and is then cut to exactly that many (the cut
may split a multi-byte character, which then decodes as U+FFFD, as a byte model's would).

Prompts are prefilled together, left-padded; each row's position ids start at 0 at its first real
token and only its real tokens enter the KV cache, so a row attends to exactly the keys, at the
positions, it would have alone.
"""

from __future__ import annotations

import torch

from bolmo.errors import GenerationError
from bolmo.generation.engine import Engine, Piece, Row
from bolmo.generation.kv_cache import KVCache, prefill
from bolmo.generation.sampling import RowSampler
from bolmo.tokenizer import pad_rows, tokenizer_of


class OlmoEngine(Engine):
    def __init__(self, model) -> None:
        self.tokenizer = tokenizer_of(model)
        self.model = model
        self.device = model.device
        eos = self.tokenizer.eos_id
        self.end_ids = frozenset(model.config.eos_token_ids) | ({eos} if eos is not None else set())
        self.cache: KVCache | None = None

    def encode(self, prompt: str | bytes) -> list[int]:
        if isinstance(prompt, bytes):
            try:
                prompt = prompt.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise GenerationError(f"a subword model needs UTF-8 prompts: {exc}") from None
        return self.tokenizer.encode(prompt)

    def banned_ids(self) -> torch.Tensor:
        """Ids the tokenizer cannot decode (the padding rows of a rounded-up vocabulary)."""
        vocab = self.model.config.vocab_size
        banned = torch.ones(vocab, dtype=torch.bool)
        known = min(vocab, len(self.tokenizer))
        banned[:known] = ~self.tokenizer.has_token[:known]
        return banned.to(self.device)

    def prefill(self, rows: list[Row], sampler: RowSampler) -> torch.Tensor:
        inner = self.model.model
        ids, valid = pad_rows([row.ids for row in rows], self.tokenizer.pad_id, "left")
        ids, valid = ids.to(self.device), valid.to(self.device)
        positions = valid.long().cumsum(-1) - 1  # padding gets -1 and is never visible to real tokens
        hidden, keys, values = prefill(inner.layers, inner.embed_tokens(ids), positions, valid)
        width = ids.shape[1]

        def real(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
            """Each row's real positions (its last len(row.ids) columns) of every layer."""
            return [[t[r : r + 1, :, width - len(row.ids) :] for t in tensors] for r, row in enumerate(rows)]

        self.cache = KVCache.from_rows(inner.layers, real(keys), real(values), self.device, self.model.dtype)
        for row in rows:  # the start id has no bytes; each prompt token ends after its last byte
            for token in row.ids[1:]:
                n = len(self.tokenizer.decode_bytes([token]))
                row.prompt_boundaries += [False] * (n - 1) + [True] if n else []
        return self._logits(hidden[:, -1])

    def piece(self, token: int) -> Piece | None:
        if token in self.end_ids:
            return None
        return Piece(token, self.tokenizer.decode_bytes([token]), True)

    def step(self, tokens: torch.Tensor, host_tokens: list[int], rows: list[Row]) -> torch.Tensor:
        inner = self.model.model
        hidden = self.cache.step(inner.embed_tokens(tokens.unsqueeze(1)), None, list(range(len(rows))))
        return self._logits(hidden[:, -1])

    def keep_rows(self, keep: list[int]) -> None:
        self.cache.keep_rows(torch.tensor(keep, device=self.device), keep)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.model.model.norm(hidden))

    # --- Continuous batching (bolmo serve) --------------------------------------------------------

    def join(self, rows: list[Row], sampler: RowSampler) -> torch.Tensor:
        running = self.cache
        logits = self.prefill(rows, sampler)  # the new rows alone, in a fresh cache
        if running is not None:
            self.cache = KVCache.concat([running, self.cache])
        return logits

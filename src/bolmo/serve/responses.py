"""OpenAI response bodies built from the scheduler's `Update`s. Tokens are bytes: `usage` counts
bytes (and says so in `token_unit`), and `logprobs.tokens` holds one entry per byte: the
character for ASCII, `bytes:\\xNN` (OpenAI's spelling for a partial character) otherwise."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from bolmo.serve.scheduler import ByteLogprob, Update

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "error": "error"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def byte_token(byte: int) -> str:
    return chr(byte) if byte < 0x80 else f"bytes:\\x{byte:02x}"


@dataclass
class ChoiceText:
    """Everything one choice has received, for a non-streamed response or the usage chunk."""

    prompt_bytes: int = 0
    text: str = ""
    data: bytearray = field(default_factory=bytearray)  # echoed prompt (if any) then new bytes
    new_bytes: int = 0
    logprobs: list[ByteLogprob] = field(default_factory=list)  # per byte of `data`, when asked for
    prompt_patch_ends: list[bool] = field(default_factory=list)
    patch_ends: list[bool] = field(default_factory=list)  # per new byte
    finish_reason: str | None = None

    def add(self, update: Update, echo: bool) -> None:
        if update.prompt:
            self.prompt_patch_ends = update.patch_ends
        else:
            self.new_bytes += len(update.data)
            self.patch_ends += update.patch_ends
        if echo or not update.prompt:
            self.text += update.text
            self.data += update.data
            self.logprobs += update.logprobs
        if update.finish_reason is not None:
            self.finish_reason = FINISH_REASONS[update.finish_reason]


def logprobs_body(entries: list[ByteLogprob], data: bytes, start_offset: int = 0) -> dict:
    """The completions `logprobs` object for bytes `data` (one entry each). `text_offset` counts
    characters from `start_offset`: every byte that does not continue a UTF-8 character starts one."""
    offsets, offset = [], start_offset
    for byte in data:
        offsets.append(offset)
        offset += (byte & 0xC0) != 0x80
    return {
        "tokens": [byte_token(b) for b, _, _ in entries],
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": [{byte_token(b): v for b, v in top} for _, _, top in entries],
        "text_offset": offsets[: len(entries)],
    }


def usage_body(prompt_bytes: int, completion_bytes: int) -> dict:
    return {"prompt_tokens": prompt_bytes, "completion_tokens": completion_bytes,
            "total_tokens": prompt_bytes + completion_bytes, "token_unit": "byte"}


def created() -> int:
    return int(time.time())

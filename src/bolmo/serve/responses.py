"""OpenAI response bodies built from the scheduler's `Update`s. Tokens are bytes: `usage` counts
bytes (and says so in `token_unit`), and `logprobs.tokens` holds one entry per byte: the
character for ASCII, `bytes:\\xNN` (OpenAI's spelling for a partial character) otherwise. A
byte's `text_offset` is that of the character it belongs to."""

from __future__ import annotations

import codecs
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

    text: str = ""
    data: bytearray = field(default_factory=bytearray)  # echoed prompt (if any) then new bytes
    new_bytes: int = 0
    logprobs: list[ByteLogprob] = field(default_factory=list)  # per byte of `data`, when asked for
    prompt_patch_ends: list[bool] = field(default_factory=list)
    patch_ends: list[bool] = field(default_factory=list)  # per new byte
    offsets: list[int] = field(default_factory=list)  # per byte of `data`: its character's offset in `text`
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
            self._extend_offsets()
        if update.finish_reason is not None:
            self.finish_reason = FINISH_REASONS[update.finish_reason]

    def _extend_offsets(self) -> None:
        """Offsets of the bytes just added. The last character so far is redone with them: it may
        have been incomplete (its bytes then all take the offset it will have)."""
        last = len(self.offsets)
        while last and self.offsets[last - 1] == self.offsets[-1]:
            last -= 1
        first_char = self.offsets[-1] if self.offsets else 0
        self.offsets[last:] = [first_char + o for o in text_offsets(bytes(self.data[last:]))]


def text_offsets(data: bytes) -> list[int]:
    """Per byte of `data`, the index in `data.decode("utf-8", "replace")` of the character it
    belongs to: a valid character's bytes share its index, and so do the bytes of an invalid or
    incomplete sequence that the decoder replaces with one U+FFFD."""
    offsets: list[int] = []
    view, start, chars = memoryview(data), 0, 0
    while start < len(data):
        try:
            codecs.utf_8_decode(view[start:], "strict", True)
            valid_end, bad_end = len(data), len(data)
        except UnicodeDecodeError as exc:
            valid_end, bad_end = start + exc.start, start + exc.end
        for byte in data[start:valid_end]:
            chars += (byte & 0xC0) != 0x80  # a byte that does not continue a character starts one
            offsets.append(chars - 1)
        if bad_end > valid_end:  # one replacement character
            offsets += [chars] * (bad_end - valid_end)
            chars += 1
        start = bad_end
    return offsets


def logprobs_body(entries: list[ByteLogprob], offsets: list[int]) -> dict:
    """The completions `logprobs` object for some bytes: one entry and one offset (see
    `ChoiceText.offsets`) each."""
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

"""The host side of decoding that every model shares: argument checks, and each row's
continuation as it grows.

Byte and subword models both count `max_new_bytes` in bytes and treat stop strings alike, so one `Continuation` serves
both: a byte model adds one byte per step, a subword model one token's bytes. The stop-string
search is incremental: only the bytes that could start a match ending in the newest piece are
read again, so a step costs O(piece + longest stop string), not O(output so far).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from bolmo.config import DEFAULT_MAX_NEW_BYTES, GREEDY
from bolmo.errors import GenerationError
from bolmo.generation.sampling import SamplingParams

MAX_NEW_BYTES = 1_000_000  # anything larger is a mistake, not a request


@dataclass(frozen=True)
class GenerateOptions:
    max_new_bytes: int
    sampling: SamplingParams
    stop: tuple[bytes, ...] = ()

    @classmethod
    def build(cls, max_new_bytes: int = DEFAULT_MAX_NEW_BYTES, temperature: float = GREEDY, top_k: int | None = None,
              top_p: float | None = None, seed: int | None = None,
              stop: str | Sequence[str] | None = None) -> GenerateOptions:
        """Validate user arguments (GenerationError names the bad one)."""
        if isinstance(max_new_bytes, bool) or not isinstance(max_new_bytes, int) or not 0 <= max_new_bytes <= MAX_NEW_BYTES:
            raise GenerationError(f"max_new_bytes must be an integer in [0, {MAX_NEW_BYTES:,}], got {max_new_bytes!r}")
        stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, (list, tuple)) or any(not isinstance(s, str) or not s for s in stops):
            raise GenerationError(f"stop must be a non-empty string or a list of them, got {stop!r}")
        return cls(max_new_bytes, SamplingParams(temperature, top_k, top_p, seed),
                   tuple(utf8(s, "stop") for s in stops))


def check_prompts(prompts: Iterable[str | bytes]) -> list[str | bytes]:
    """The prompts as a non-empty list of strings (or raw bytes), or GenerationError saying what
    is wrong. Any iterable is taken (a tuple, a generator, a numpy array or pandas Series of
    strings), read once."""
    if isinstance(prompts, (str, bytes)):
        raise GenerationError("prompts must be a list of strings (wrap a single prompt in a list)")
    try:
        prompts = list(prompts)
    except TypeError:
        raise GenerationError(f"prompts must be a list of strings, got {type(prompts).__name__}") from None
    if not prompts:
        raise GenerationError("prompts is empty: give at least one prompt (an empty string is a valid prompt)")
    bad = [type(p).__name__ for p in prompts if not isinstance(p, (str, bytes))]
    if bad:
        raise GenerationError(f"prompts must be strings (or bytes), got {', '.join(sorted(set(bad)))}")
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            utf8(prompt, f"prompts[{i}]")
    return prompts


def utf8(text: str, what: str) -> bytes:
    """`text` in UTF-8, or GenerationError (a string with lone surrogates has no encoding)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise GenerationError(f"{what} cannot be encoded as UTF-8 ({exc.reason} at character {exc.start})") from None


class Continuation:
    """One row's new bytes: cut exactly before the first stop string (which is not kept) and at
    `max_new_bytes`, plus what streaming has already shown of them.

    A stop string is searched only where a new match can be: a match that lay entirely in the
    earlier bytes would already have ended the row, so one ending in the new piece starts at
    most `len(longest stop) - 1` bytes before it. Among matches the earliest start wins."""

    def __init__(self, options: GenerateOptions) -> None:
        self.max_new_bytes = options.max_new_bytes
        self.stops = options.stop
        self.hold = max((len(s) - 1 for s in self.stops), default=0)  # bytes that may start a stop string
        self.data = bytearray()
        self.finish_reason: str | None = None if self.max_new_bytes else "length"
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._shown = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def add(self, piece: bytes) -> None:
        start = max(len(self.data) - self.hold, 0)
        self.data += piece
        cut = min((i for s in self.stops if (i := self.data.find(s, start)) >= 0), default=self.max_new_bytes)
        if cut < self.max_new_bytes:
            del self.data[cut:]
            self.finish_reason = "stop"
        elif len(self.data) >= self.max_new_bytes:
            del self.data[self.max_new_bytes :]
            self.finish_reason = "length"

    @property
    def shown(self) -> int:
        """How many bytes `new_text` has returned (as text) so far."""
        return self._shown

    def finish(self, reason: str) -> None:
        """End the row for a reason of the caller's (end of text)."""
        self.finish_reason = reason

    def new_text(self) -> str:
        """The text of the bytes no longer subject to a stop string and not returned before. The
        incremental decoder keeps a character's first bytes until it is complete; once the row
        is done everything is flushed, so the pieces concatenate to exactly `data` decoded
        (errors replaced)."""
        end = len(self.data) if self.done else max(len(self.data) - self.hold, 0)
        piece = self._decoder.decode(bytes(self.data[self._shown : end]), final=self.done)
        self._shown = end
        return piece


def text_pieces(states: Iterable[Continuation]) -> Iterator[str]:
    """Stream one row: its new text after each step of a generator (empty pieces skipped)."""
    for state in states:
        piece = state.new_text()
        if piece:
            yield piece

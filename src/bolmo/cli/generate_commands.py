"""`bolmo generate`: stream a continuation to the terminal, or show where the patches (Bolmo) or
tokens (subword OLMo models) fall."""

from __future__ import annotations

import argparse
import codecs
import os
import sys

from bolmo.cli.model_commands import add_compile_argument, add_model_arguments, load_from_args, read_stdin
from bolmo.config import DEFAULT_MAX_NEW_BYTES, GREEDY

PATCH_SEPARATOR = "|"
_PATCH_STYLES = ("black on cyan", "black on yellow")  # alternate per patch


def register(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser("generate", help="generate a continuation of PROMPT, streamed as it is decoded")
    gen.add_argument("prompt", metavar="PROMPT", help="the text to continue ('-' reads it from stdin)")
    add_model_arguments(gen)
    gen.add_argument("--max-new-bytes", type=int, default=DEFAULT_MAX_NEW_BYTES,
                     help=f"bytes to generate (default {DEFAULT_MAX_NEW_BYTES})")
    gen.add_argument("--temperature", type=float, default=GREEDY, help="0 (default) is greedy")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k most likely ids")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with mass >= P")
    gen.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    gen.add_argument("--stop", action="append", default=None, metavar="STR",
                     help="stop before the first occurrence of STR (not included in the output); "
                          "repeat for several: --stop A --stop B")
    gen.add_argument("--show-patches", action="store_true",
                     help="print prompt and continuation with patch boundaries (subword models: token "
                          f"boundaries) marked: colours in a terminal, '{PATCH_SEPARATOR}' otherwise")
    add_compile_argument(gen)
    gen.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bolmo.generation import GenerateOptions, generate_ids

    # Raw bytes, so a prompt that is not valid UTF-8 (argv decodes with surrogate escapes) reaches a
    # byte model as the bytes given; a subword model refuses it with a GenerationError.
    prompt = read_stdin() if args.prompt == "-" else os.fsencode(args.prompt)
    arguments = dict(max_new_bytes=args.max_new_bytes, temperature=args.temperature, top_k=args.top_k,
                     top_p=args.top_p, seed=args.seed, stop=args.stop)
    GenerateOptions.build(**arguments)  # reject bad arguments before loading the model
    note_unused_sampling(args)
    model = load_from_args(args)
    if not args.show_patches:
        shown = terminal_safe if sys.stdout.isatty() else str  # piped output keeps every byte as generated
        for piece in model.stream(prompt, **arguments):
            sys.stdout.write(shown(piece))
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    result = generate_ids(model, [prompt], **arguments)[0]
    n_prompt = len(result.prompt)
    patches = patch_characters(result.prompt + result.data, result.prompt_boundaries + result.boundaries)
    console = Console(highlight=False)
    if console.is_terminal:
        from rich.text import Text

        text = Text()
        for i, patch in enumerate(patches):
            for char, start in patch:
                text.append(terminal_safe(char), style=_PATCH_STYLES[i % 2] + ("" if start < n_prompt else " bold"))
        console.print(text)
    else:
        print(PATCH_SEPARATOR.join("".join(char for char, _ in patch) for patch in patches))
    n_bytes = n_prompt + len(result.data)
    unit, units = ("patch", "patches") if model_is_bolmo(model) else ("token", "tokens")
    print(f"{n_bytes} bytes in {len(patches)} {units} ({n_bytes / max(len(patches), 1):.2f} bytes per {unit}), "
          f"finished by {result.finish_reason}", file=sys.stderr)
    return 0


# Control characters a terminal would act on (cursor moves, colours, clearing the screen, a bell):
# every C0 one but newline and tab, DEL, and the C1 range. Random or barely trained models emit them.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if chr(c) not in "\n\t"}


def terminal_safe(text: str) -> str:
    """`text` with the control characters a terminal would act on written as visible escapes
    (ESC as `\\x1b`): what goes to a terminal, never to a pipe or file."""
    return text.translate(_CONTROL)


def note_unused_sampling(args: argparse.Namespace) -> None:
    """Greedy decoding ignores the sampling options: say so rather than let them look applied."""
    given = [flag for flag, value in (("--top-k", args.top_k), ("--top-p", args.top_p), ("--seed", args.seed))
             if value is not None]
    if args.temperature == 0 and given:
        print(f"bolmo generate: note: {', '.join(given)} {'has' if len(given) == 1 else 'have'} no effect with "
              "--temperature 0 (greedy)", file=sys.stderr)


def model_is_bolmo(model) -> bool:
    from bolmo.model.bolmo import BolmoForCausalLM

    return isinstance(model, BolmoForCausalLM)


def patch_characters(data: bytes, boundaries: list[bool]) -> list[list[tuple[str, int]]]:
    """Split bytes into patches or tokens (one ends after each True), each a list of (character,
    index of its first byte). A boundary inside a multi-byte character moves to the end of that
    character, so no character is split; invalid UTF-8 shows as U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    patches: list[list[tuple[str, int]]] = [[]]
    char_start, pending_end = 0, False
    for i, (byte, closes) in enumerate(zip(data, boundaries)):
        for char in decoder.decode(bytes((byte,)), final=i == len(data) - 1):
            patches[-1].append((char, char_start))
        pending_end |= closes
        if decoder.getstate()[0] == b"":  # at a character boundary
            char_start = i + 1
            if pending_end:
                patches.append([])
                pending_end = False
    return [patch for patch in patches if patch]

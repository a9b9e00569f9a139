"""One home for each fact the code relies on (import cycles and layers: tests/test_layers.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import bolmo

SRC = Path(bolmo.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_special_ids_are_defined_only_in_bolmo_config():
    """pad/bos/eos/<bpe_token_end> ids, the byte offset and the vocabulary sizes have one home."""
    names = {"PAD_ID", "BOS_ID", "EOS_ID", "BPE_TOKEN_END_ID", "BYTE_OFFSET", "PLAIN_VOCAB", "FUSED_VOCAB"}
    defined = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                targets = [t for target in node.targets
                           for t in (target.elts if isinstance(target, ast.Tuple) else [target]) if isinstance(t, ast.Name)]
                defined |= {(_module_name(path), t.id) for t in targets if t.id in names}
    assert {module for module, _ in defined} == {"bolmo.config"}
    assert {name for _, name in defined} == names


def test_cli_option_defaults_are_the_library_defaults():
    """`bolmo byteify-init` and `bolmo serve` take their defaults from ByteifyOptions and
    ServeConfig, so the CLI and the Python API cannot drift apart."""
    import dataclasses

    from bolmo.cli import build_parser
    from bolmo.config import ByteifyOptions
    from bolmo.serve.config import ServeConfig

    init = vars(build_parser().parse_args(["byteify-init", "--teacher", "t", "--out", "o"]))
    for field in dataclasses.fields(ByteifyOptions):
        assert init[field.name] == getattr(ByteifyOptions(), field.name), field.name
    serve = vars(build_parser().parse_args(["serve"]))
    for name in ("max_batch", "max_queue", "api_key"):
        assert serve[name] == getattr(ServeConfig(), name), name


def test_generation_defaults_have_one_home():
    """max_new_bytes and temperature default to bolmo.config's values in every generation entry
    point: the driver, the model classes, GenerateOptions, SamplingParams and `bolmo generate`."""
    import inspect

    from bolmo.cli import build_parser
    from bolmo.config import DEFAULT_MAX_NEW_BYTES, GREEDY
    from bolmo.generation import GenerateOptions, driver
    from bolmo.generation.sampling import SamplingParams
    from bolmo.inference import Bolmo

    entry_points = [driver.generate, driver.generate_ids, driver.stream, Bolmo.generate, Bolmo.stream,
                    GenerateOptions.build]
    for fn in entry_points:
        parameters = inspect.signature(fn).parameters
        assert parameters["max_new_bytes"].default == DEFAULT_MAX_NEW_BYTES, fn.__qualname__
        assert parameters["temperature"].default == GREEDY, fn.__qualname__
    assert SamplingParams().temperature == GREEDY
    args = vars(build_parser().parse_args(["generate", "hello"]))
    assert (args["max_new_bytes"], args["temperature"]) == (DEFAULT_MAX_NEW_BYTES, GREEDY)


def test_serve_config_reads_without_the_serve_extra():
    """The CLI builds `bolmo serve`'s flags from ServeConfig: importing it must not import FastAPI
    (the `serve` extra, possibly not installed), nor torch."""
    import subprocess
    import sys

    code = ("import sys, bolmo.cli; bolmo.cli.build_parser(); from bolmo.serve import ServeConfig; "
            "print(sorted({'fastapi', 'uvicorn', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

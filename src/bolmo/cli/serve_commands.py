"""`bolmo serve`: the OpenAI-compatible server (bolmo.serve) under uvicorn."""

from __future__ import annotations

import argparse

from bolmo.cli.model_commands import add_compile_argument, add_model_arguments
from bolmo.errors import ServeError

DEFAULT_MODEL_NAME = "bolmo-default"  # the served id of the bundled model


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API "
                                                "(continuous batching; a demo page at /)")
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route "
                                                       "but /health")
    serve.add_argument("--max-batch", type=int, default=32, help="rows decoded together (default 32)")
    serve.add_argument("--max-queue", type=int, default=64, help="requests waiting to join; more get 429 "
                                                                 "(default 64)")
    serve.add_argument("--model-name", default=None, help="the model id clients name (default: --model, or "
                                                          f"{DEFAULT_MODEL_NAME!r} for the bundled model)")
    add_compile_argument(serve)
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    for name in ("max_batch", "max_queue"):
        if getattr(args, name) < 1:
            raise ServeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.port < 65536:
        raise ServeError(f"--port must be in [0, 65535], got {args.port}")
    import uvicorn

    from bolmo.cli.model_commands import load_from_args
    from bolmo.loading import resolve_source
    from bolmo.serve import ServeConfig, create_app

    model = load_from_args(args)
    config = ServeConfig(model_name=args.model_name or args.model or DEFAULT_MODEL_NAME, api_key=args.api_key,
                         max_batch=args.max_batch, max_queue=args.max_queue)
    app = create_app(model, config, resolve_source(args.model))
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    except OSError as exc:  # the port is taken, the address does not exist
        raise ServeError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    return 0

"""`bolmo serve`: the OpenAI-compatible server (bolmo.serve) under uvicorn."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from bolmo.cli.model_commands import add_compile_argument, add_model_arguments
from bolmo.errors import ServeError
from bolmo.serve.config import ServeConfig

# Ctrl-C / SIGTERM: requests in flight get this long to finish (--shutdown-grace), then they are cut short.
SHUTDOWN_GRACE_S = 10.0
DEFAULTS = ServeConfig()  # its limits' defaults are the flags' defaults
SERVED_PREFIX = "bolmo-"  # bundled models are served as bolmo-default, bolmo-default-teacher


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API "
                                                "(continuous batching; a demo page at /)")
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route "
                                                       "but /health")
    serve.add_argument("--max-batch", type=int, default=DEFAULTS.max_batch,
                       help=f"rows decoded together (default {DEFAULTS.max_batch})")
    serve.add_argument("--max-queue", type=int, default=DEFAULTS.max_queue,
                       help=f"requests waiting to join; more get 429 (default {DEFAULTS.max_queue})")
    serve.add_argument("--model-name", default=None, help="the model id clients name (default: --model, or "
                                                          f"'{SERVED_PREFIX}NAME' for a bundled model: "
                                                          f"'{SERVED_PREFIX}default' without --model)")
    serve.add_argument("--shutdown-grace", type=float, default=SHUTDOWN_GRACE_S, metavar="S",
                       help="at Ctrl-C or SIGTERM, requests in flight get S seconds to finish, then they are cut "
                            f"short (default {SHUTDOWN_GRACE_S:g}); a second Ctrl-C stops at once")
    add_compile_argument(serve)
    serve.set_defaults(handler=run_serve)


def served_model_name(model_name: str | None, model: str | None) -> str:
    """The id clients name: --model-name, else --model as given, except that a bundled model has
    one id however it was named (no --model and `--model default` are both `bolmo-default`)."""
    if model_name:
        return model_name
    from bolmo.checkpoint.sources import BUNDLED_MODELS, bundled_or_path  # torch: imported when serving

    bundled = bundled_or_path(model)
    for name, directory in BUNDLED_MODELS.items():
        if bundled == directory:
            return SERVED_PREFIX + name
    return str(model)


def run_serve(args: argparse.Namespace) -> int:
    for name in ("max_batch", "max_queue"):
        if getattr(args, name) < 1:
            raise ServeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.shutdown_grace < float("inf"):  # NaN fails too
        raise ServeError(f"--shutdown-grace must be a finite number of seconds >= 0, got {args.shutdown_grace}")
    if not 0 <= args.port < 65536:
        raise ServeError(f"--port must be in [0, 65535], got {args.port}")
    require_serve_extra()
    sockets = listen(args.host, args.port)  # before the model loads: a taken port fails at once
    try:
        return serve_on(sockets, args)
    finally:
        for sock in sockets:
            sock.close()


def require_serve_extra() -> None:
    """The server's own dependencies (the `serve` extra), checked before the port and the model."""
    from importlib.util import find_spec

    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if find_spec(name) is None]
    if missing:
        raise ServeError(f"bolmo serve needs {', '.join(missing)}: pip install 'bolmo[serve]'")


def listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address `host` resolves to (as uvicorn would bind them), handed to
    uvicorn as they are: binding once leaves no window for another process to take the port."""
    sockets: list[socket.socket] = []
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sockets.append(socket.socket(family, kind, proto))
            port = bind(sockets[-1], (address[0], port, *address[2:]))  # --port 0: the same free port for all
    except OSError as exc:  # the port is taken, the address is not this machine's or does not resolve
        for sock in sockets:
            sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sockets


def bind(sock: socket.socket, address: tuple) -> int:
    """Bind and listen with asyncio's (so uvicorn's) options; the port bound."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # "::" and "0.0.0.0" can both be served
    sock.bind(address)
    sock.listen(2048)
    return sock.getsockname()[1]


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_on(sockets: list[socket.socket], args: argparse.Namespace) -> int:
    """Load the model and serve it on `sockets` until interrupted."""
    from bolmo.cli.model_commands import load_from_args
    from bolmo.loading import resolve_source
    from bolmo.serve import create_app

    model = load_from_args(args)
    config = ServeConfig(model_name=served_model_name(args.model_name, args.model), api_key=args.api_key,
                         max_batch=args.max_batch, max_queue=args.max_queue)
    app = create_app(model, config, resolve_source(args.model))
    server = uvicorn_server(app, args.shutdown_grace)
    for sock in sockets:  # uvicorn says where it listens only when it binds the sockets itself
        print(f"bolmo serve: listening on {url_of(sock)}", file=sys.stderr)
    server.run(sockets=sockets)
    return 0


def uvicorn_server(app, shutdown_grace: float):
    """A uvicorn server for `app` (uvicorn imported here: `bolmo --help` stays fast)."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that a second Ctrl-C during the shutdown grace period ends the
        process at once: uvicorn would cancel every task, and the requests and the app's lifespan
        would each print a CancelledError traceback. Serving writes no files, so nothing is left
        half-written."""

        def handle_exit(self, sig: int, frame) -> None:
            if self.should_exit and sig == signal.SIGINT:
                print("bolmo serve: interrupted again: stopped without waiting for the requests in flight",
                      file=sys.stderr, flush=True)
                os._exit(128 + signal.SIGINT)
            super().handle_exit(sig, frame)

    return Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=shutdown_grace))

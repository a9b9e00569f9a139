"""`bolmo serve`: an OpenAI-compatible HTTP server with continuous batching.

Layout: `config` (ServeConfig), `schemas` (request bodies, validated by pydantic), `scheduler`
(one background thread running a `bolmo.generation.batch.Batch` that requests join and leave
between steps), `responses` (OpenAI response bodies and byte log-probabilities), `metrics`
(Prometheus), `routes` and `app` (FastAPI), `static/index.html` (the demo page at `/`); the chat
template comes from `bolmo.chat_template`. Tokens in requests and responses are bytes.
"""

from bolmo.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str):
    # create_app needs FastAPI (the `serve` extra): imported when asked for, so that ServeConfig
    # (whose defaults are the CLI's) reads without it.
    if name == "create_app":
        from bolmo.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

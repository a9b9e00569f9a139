"""The FastAPI application: routes, OpenAI-style errors, the API key, request metrics, and the
scheduler thread's lifetime (started and stopped with the app)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bolmo.chat_template import find_chat_template
from bolmo.serve.config import ServeConfig
from bolmo.serve.metrics import Metrics
from bolmo.serve.routes import ApiError, Server, error_body, router
from bolmo.serve.scheduler import Scheduler

log = logging.getLogger("bolmo.serve")
OPEN_ROUTES = {"/health"}
UNION_BRANCH = re.compile(r"(str|int|float|bool|list\[.+\]|dict\[.+\]|[A-Z]\w*)")  # pydantic's tags
KNOWN_ROUTES = {"/", "/health", "/metrics", "/openapi.json", "/v1/models", "/v1/completions", "/v1/chat/completions"}


def create_app(model, config: ServeConfig | None = None, model_dir: Path | None = None) -> FastAPI:
    """An app serving `model` (loaded by `bolmo.load`); `model_dir` is where its chat template is
    looked for."""
    config = config or ServeConfig()
    metrics = Metrics()
    scheduler = Scheduler(model, config.max_batch, config.max_queue, metrics)
    server = Server(config, scheduler, metrics, find_chat_template(model_dir))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="bolmo serve", version="1", lifespan=lifespan,
                  description="OpenAI-compatible completions for Bolmo byte-level models. Tokens are bytes: "
                              "max_tokens, usage and logprobs count UTF-8 bytes.")
    app.state.server = server
    app.include_router(router)
    app.add_middleware(ApiKeyAndMetrics, api_key=config.api_key, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body(ApiError(400, "the request body is not valid JSON")), status_code=400)
        if tuple(first.get("loc", ())) == ("body",) and "json" not in request.headers.get("content-type", ""):
            # FastAPI reads a body without a JSON content type as a string (`curl -d` sends a form type)
            return JSONResponse(error_body(ApiError(400, "the request body must be a JSON object sent with "
                                                         "Content-Type: application/json")), status_code=400)
        # loc: ("body", field, index or union branch, ...); the field is the OpenAI `param`. A union
        # branch ("str", "list[str]") is pydantic's name for a type tried, not a place in the body.
        where = [str(p) for p in first.get("loc", ()) if p != "body" and not UNION_BRANCH.fullmatch(str(p))]
        message = f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(ApiError(400, message, where[0] if where else None)), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(ApiError(exc.status_code, str(exc.detail))), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(error_body(ApiError(500, f"internal error: {type(exc).__name__}", kind="server_error")),
                            status_code=500)

    return app


class ApiKeyAndMetrics:
    """Pure ASGI middleware (it does not buffer streamed responses): the Bearer API key on every
    route but /health (the page at / may pass it as ?key=, since a browser cannot set headers on
    navigation), and a count of responses per route and status."""

    def __init__(self, app, api_key: str | None, metrics: Metrics) -> None:
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in KNOWN_ROUTES else "other"
        status = {"code": 500, "started": False, "complete": False}

        async def record(message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                status["complete"] = True
            await send(message)

        try:
            if self.api_key is not None and path not in OPEN_ROUTES and not self._authorized(scope):
                await self._unauthorized(record)
                return
            await self.app(scope, receive, record)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when its shutdown grace period ends: end
            # each response here with one log line (uvicorn would log a traceback per request).
            # Not re-raised: this is the request's outermost frame, and the task ends right here.
            log.warning("%s %s cut short: the server is shutting down", scope.get("method", ""), path)
            if not status["started"]:
                await self._shutting_down(record)
            elif not status["complete"]:
                await record({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()

    def _authorized(self, scope) -> bool:
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip() == self.api_key:  # the scheme is case-insensitive
            return True
        if scope["path"] == "/":
            return parse_qs(scope.get("query_string", b"").decode("latin-1")).get("key") == [self.api_key]
        return False

    async def _unauthorized(self, send) -> None:
        await _send_error(send, ApiError(401, "a valid API key is required (Authorization: Bearer KEY)",
                                         code="invalid_api_key"))

    async def _shutting_down(self, send) -> None:
        await _send_error(send, ApiError(503, "the server is shutting down", kind="server_error"))


async def _send_error(send, error: ApiError) -> None:
    """An OpenAI-style error response sent through raw ASGI messages (from the middleware)."""
    body = json.dumps(error_body(error), separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

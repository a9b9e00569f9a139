"""The HTTP routes: OpenAI's /v1/models, /v1/completions and /v1/chat/completions, plus
/health, /metrics and the demo page at /. Handlers validate, submit a `scheduler.Request`, and
turn its updates into a JSON body or server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from bolmo.errors import ConfigError, GenerationError
from bolmo.generation.continuation import GenerateOptions
from bolmo.chat_template import ChatTemplate
from bolmo.serve.config import ServeConfig
from bolmo.serve.metrics import Metrics
from bolmo.serve.responses import ChoiceText, created, logprobs_body, new_id, usage_body
from bolmo.serve.scheduler import Choice, QueueFull, Scheduler, Update
from bolmo.serve.scheduler import Request as Job
from bolmo.serve.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

router = APIRouter()
CHAT_DEFAULT_MAX_TOKENS = 256
MAX_STOPS = 4


class ApiError(Exception):
    """Answered as {"error": {...}} with `status` (see `app`)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


@dataclass
class Server:
    """What the routes share (stored as app.state.server)."""

    config: ServeConfig
    scheduler: Scheduler
    metrics: Metrics
    chat_template: ChatTemplate | None


def server_of(request: Request) -> Server:
    return request.app.state.server


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(resources.files("bolmo.serve").joinpath("static/index.html").read_text(encoding="utf-8"))


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(server_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(request: Request) -> dict:
    name = server_of(request).config.model_name
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "bolmo"}]}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    server = server_of(request)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise ApiError(400, "prompt must be a string or a non-empty list of strings", "prompt")
    if body.logprobs is not None and not server.scheduler.byte_model:
        raise ApiError(400, "logprobs are per byte and need a Bolmo (byte-level) model", "logprobs")
    job = submit(server, body, prompts, body.max_tokens, body.logprobs, body.echo, body.return_patches)
    started = time.perf_counter()
    if body.stream:
        return sse(completion_chunks(server, body, job, started, request))
    texts = await collect(server, job, request, started, "/v1/completions")
    choices = []
    for choice, text in zip(job.choices, texts):
        entry = {"index": choice.index, "text": text.text, "logprobs": None, "finish_reason": text.finish_reason}
        if body.logprobs is not None:
            entry["logprobs"] = logprobs_body(text.logprobs, text.offsets)
        if body.return_patches:
            entry["bolmo"] = {"prompt_patch_ends": text.prompt_patch_ends, "patch_ends": text.patch_ends}
        choices.append(entry)
    return JSONResponse({"id": new_id("cmpl"), "object": "text_completion", "created": created(),
                         "model": server.config.model_name, "choices": choices, "usage": usage(job, texts, body.n)})


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    server = server_of(request)
    if server.chat_template is None:
        raise ApiError(400, f"model {server.config.model_name!r} has no chat template (no 'chat_template' in its "
                            "tokenizer_config.json): use /v1/completions", "messages", "no_chat_template")
    if body.logprobs or body.top_logprobs is not None:
        raise ApiError(400, "chat completions do not return log-probabilities here: use /v1/completions with "
                            "logprobs (and echo for the prompt's)", "logprobs")
    try:
        prompt = server.chat_template.render([{"role": m.role, "content": m.text()} for m in body.messages])
    except ConfigError as exc:  # the template rejected these messages
        raise ApiError(400, str(exc), "messages") from None
    max_tokens = body.max_tokens
    if max_tokens is None:
        max_tokens = min(CHAT_DEFAULT_MAX_TOKENS, server.config.max_tokens)
    job = submit(server, body, [prompt], max_tokens, None, False, False)
    started = time.perf_counter()
    if body.stream:
        return sse(chat_chunks(server, body, job, started, request))
    texts = await collect(server, job, request, started, "/v1/chat/completions")
    choices = [{"index": c.index, "message": {"role": "assistant", "content": t.text}, "logprobs": None,
                "finish_reason": t.finish_reason} for c, t in zip(job.choices, texts)]
    return JSONResponse({"id": new_id("chatcmpl"), "object": "chat.completion", "created": created(),
                         "model": server.config.model_name, "choices": choices, "usage": usage(job, texts, body.n)})


# --- shared by both generating routes ----------------------------------------------------------


def check_context(scheduler: Scheduler, prompts: list[str], param: str) -> None:
    """A 400 (context_length_exceeded) for a prompt that does not fit the model's positions, as
    OpenAI-style servers answer: the library would keep the prompt's end with a warning a client
    never sees, and echoed log-probabilities over positions past the context would not be the
    model's scores. (Bytes for Bolmo, tokens for a subword model; new bytes may run past it.)"""
    positions = scheduler.model.config.context_positions
    if positions is None:
        return
    for prompt in prompts:
        needed = len(scheduler.engine.encode(prompt))  # the start id and the prompt's ids
        if needed > positions:
            raise ApiError(400, f"a prompt needs {needed} positions (the start id and its ids); this model has "
                                f"{positions} (max_position_embeddings)", param, "context_length_exceeded")


def submit(server: Server, body: SamplingFields, prompts: list[str], max_tokens: int, top_logprobs: int | None,
           echo: bool, patches: bool) -> Job:
    """Check the request against the server's limits and queue it (429 when the queue is full)."""
    config = server.config
    if body.model is not None and body.model != config.model_name:
        raise ApiError(404, f"model {body.model!r} does not exist; this server serves {config.model_name!r}",
                       "model", "model_not_found")
    if max_tokens > config.max_tokens:
        raise ApiError(400, f"max_tokens (bytes) must be at most {config.max_tokens}, got {max_tokens}", "max_tokens")
    if body.n > config.max_n:
        raise ApiError(400, f"n must be at most {config.max_n}, got {body.n}", "n")
    if len(prompts) * body.n > config.max_batch:
        raise ApiError(400, f"prompts x n = {len(prompts) * body.n} exceeds the batch size {config.max_batch}", "n")
    for prompt in prompts:
        size = len(prompt.encode("utf-8", errors="surrogatepass"))
        if size > config.max_prompt_bytes:
            raise ApiError(400, f"a prompt has {size} bytes; the limit is {config.max_prompt_bytes}", "prompt",
                           "context_length_exceeded")
    stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop takes at most {MAX_STOPS} strings, got {len(stops)}", "stop")
    if "" in stops:
        raise ApiError(400, "stop strings must be non-empty", "stop")
    try:
        for prompt in prompts:
            prompt.encode("utf-8")
        options = GenerateOptions.build(max_tokens, body.temperature, body.top_k,
                                        None if body.top_p >= 1.0 else body.top_p, body.seed, stops or None)
    except UnicodeEncodeError as exc:
        raise ApiError(400, f"a prompt is not valid Unicode text: {exc}", "prompt") from None
    except GenerationError as exc:
        raise ApiError(400, str(exc)) from None
    check_context(server.scheduler, prompts, "messages" if isinstance(body, ChatCompletionRequest) else "prompt")
    choices = [Choice(p * body.n + i, prompt, options,
                      None if body.seed is None else body.seed + p * body.n + i, top_logprobs)
               for p, prompt in enumerate(prompts) for i in range(body.n)]
    job = Job(choices, echo=echo, patches=patches, stream=body.stream)
    try:
        server.scheduler.submit(job)
    except QueueFull:
        raise ApiError(429, "the server is busy (request queue full); retry later", None, "queue_full",
                       "rate_limit_error") from None
    return job


async def updates(server: Server, job: Job, request: Request, poll_disconnect: bool) -> AsyncIterator[Update]:
    """The job's updates until every choice finished. A client that goes away cancels the job:
    a streamed response notices when a write fails (the generator is closed), a plain one by
    polling."""
    remaining = len(job.choices)
    try:
        while remaining:
            try:
                update = await asyncio.wait_for(job.updates.get(), timeout=0.5)
            except TimeoutError:
                if poll_disconnect and await request.is_disconnected():
                    return
                continue
            if update.error is not None:
                raise ApiError(500, f"generation failed: {update.error}", kind="server_error")
            if update.finish_reason is not None:
                remaining -= 1
            yield update
    finally:
        if remaining:
            server.scheduler.cancel(job)


async def collect(server: Server, job: Job, request: Request, started: float, route: str) -> list[ChoiceText]:
    """Every choice's whole text (a non-streamed response; a client that left cancels the job)."""
    texts = choice_texts(job)
    async for _ in streamed(server, job, request, started, route, texts, poll_disconnect=True):
        pass
    return texts


def choice_texts(job: Job) -> list[ChoiceText]:
    return [ChoiceText() for _ in job.choices]


def choice_of(job: Job, update: Update) -> Choice:
    return next(c for c in job.choices if c.index == update.index)


def usage(job: Job, texts: list[ChoiceText], n: int) -> dict:
    """Bytes of every prompt (once, not once per choice: choice p * n + i is prompt p's i-th) and of
    every choice's new text."""
    prompt_bytes = sum(len(c.prompt.encode("utf-8")) for c in job.choices if c.index % n == 0)
    return usage_body(prompt_bytes, sum(t.new_bytes for t in texts))


def sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def encode() -> AsyncIterator[str]:
        async for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(encode(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def streamed(server: Server, job: Job, request: Request, started: float, route: str,
                   texts: list[ChoiceText], poll_disconnect: bool = False
                   ) -> AsyncIterator[tuple[Update, ChoiceText]]:
    """Updates with each choice's running totals (kept in `texts`, one per choice of `job`); an
    error becomes the stream's last event."""
    first = True
    async for update in updates(server, job, request, poll_disconnect=poll_disconnect):
        if first:
            server.metrics.first_byte.labels(route).observe(time.perf_counter() - started)
            first = False
        text = texts[job.choices.index(choice_of(job, update))]
        text.add(update, job.echo)
        yield update, text
    server.metrics.latency.labels(route).observe(time.perf_counter() - started)


async def completion_chunks(server: Server, body: CompletionRequest, job: Job, started: float,
                            request: Request) -> AsyncIterator[dict]:
    cid, when, name = new_id("cmpl"), created(), server.config.model_name
    texts = choice_texts(job)
    try:
        async for update, text in streamed(server, job, request, started, "/v1/completions", texts):
            shown = update.prompt and not job.echo  # the prompt's boundaries only: no text
            choice = {"index": update.index, "text": "" if shown else update.text, "logprobs": None,
                      "finish_reason": text.finish_reason if update.finish_reason else None}
            if body.logprobs is not None and not shown:
                first = len(text.offsets) - len(update.data)  # the update's bytes are the last ones
                choice["logprobs"] = logprobs_body(update.logprobs, text.offsets[first:])
            if body.return_patches:
                choice["bolmo"] = {"bytes": list(update.data), "patch_ends": update.patch_ends,
                                   "prompt": update.prompt}
            yield {"id": cid, "object": "text_completion", "created": when, "model": name, "choices": [choice]}
    except ApiError as exc:
        yield error_body(exc)
        return
    if body.stream_options is not None and body.stream_options.include_usage:
        yield {"id": cid, "object": "text_completion", "created": when, "model": name, "choices": [],
               "usage": usage(job, texts, body.n)}


async def chat_chunks(server: Server, body: ChatCompletionRequest, job: Job, started: float,
                      request: Request) -> AsyncIterator[dict]:
    cid, when, name = new_id("chatcmpl"), created(), server.config.model_name

    def chunk(choices: list[dict], **extra) -> dict:
        return {"id": cid, "object": "chat.completion.chunk", "created": when, "model": name, "choices": choices,
                **extra}

    yield chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                 for c in job.choices])
    texts = choice_texts(job)
    try:
        async for update, text in streamed(server, job, request, started, "/v1/chat/completions", texts):
            delta = {"content": update.text} if update.text else {}
            yield chunk([{"index": update.index, "delta": delta,
                          "finish_reason": text.finish_reason if update.finish_reason else None}])
    except ApiError as exc:
        yield error_body(exc)
        return
    if body.stream_options is not None and body.stream_options.include_usage:
        yield chunk([], usage=usage(job, texts, body.n))


def error_body(exc: ApiError) -> dict:
    return {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}

"""Continuous batching: one background thread decodes every running request in one batch.

Torch work is not async, so all of it (prefill, steps, echo log-probabilities) happens in this
thread, and the event loop only validates, waits and writes. Requests wait in a bounded queue
(`QueueFull` -> 429), join the running `Batch` between two steps when there are free rows, and
leave it when done or when their client goes away (`cancel`: the rows are dropped before the
next step). Each row keeps its own prompt, caches, sampler and seed, so a response is what the
same request gives alone, whatever else is in the batch.

After every step each request receives `Update`s (new text and bytes, patch boundaries, byte
log-probabilities, finish reason) on its asyncio queue through `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from bolmo.generation.batch import Batch
from bolmo.generation.continuation import Continuation, GenerateOptions
from bolmo.generation.driver import engine_for
from bolmo.generation.engine import Row
from bolmo.generation.sampling import RowSampler
from bolmo.model.bolmo import BolmoForCausalLM
from bolmo.scoring import byte_distributions, folded_byte_logprobs
from bolmo.serve.metrics import Metrics

ByteLogprob = tuple[int, float, list[tuple[int, float]]]  # byte, its log-prob, the top (byte, log-prob)s


class QueueFull(Exception):
    """The wait queue is at its bound: answer 429."""


@dataclass
class Update:
    """What one choice gained since its last update."""

    index: int
    text: str
    data: bytes  # the bytes `text` decodes from
    patch_ends: list[bool]  # per byte of `data`: a patch (token) ends after it
    logprobs: list[ByteLogprob]
    finish_reason: str | None = None
    error: str | None = None  # the request failed inside the scheduler
    prompt: bool = False  # this update carries the prompt (echo, or patch boundaries asked for)


@dataclass
class Choice:
    """One row of a request: a prompt, its options and seed, and how far it was reported."""

    index: int
    prompt: str
    options: GenerateOptions
    seed: int | None
    top_logprobs: int | None  # None: no log-probabilities
    row: Row | None = None
    generated: list[ByteLogprob] = field(default_factory=list)  # per new byte, when top_logprobs is set
    reported_done: bool = False


class Request:
    """A submitted request: its choices, and the queue its handler reads updates from."""

    def __init__(self, choices: list[Choice], echo: bool = False, patches: bool = False,
                 stream: bool = True) -> None:
        self.choices = choices
        self.stream = stream  # updates after every step; otherwise one per choice when it is done
        self.echo = echo  # send the prompt back (as text, and with log-probabilities if asked)
        self.patches = patches  # send the prompt's patch boundaries even without echo
        self.loop = asyncio.get_running_loop()
        self.updates: asyncio.Queue[Update] = asyncio.Queue()

    def post(self, update: Update) -> None:
        self.loop.call_soon_threadsafe(self.updates.put_nowait, update)

    @property
    def done(self) -> bool:
        return all(c.row is not None and c.row.done for c in self.choices)


class Scheduler:
    def __init__(self, model, max_batch: int, max_queue: int, metrics: Metrics) -> None:
        self.model = model
        self.engine = engine_for(model)
        self.byte_model = isinstance(model, BolmoForCausalLM)  # byte log-probabilities need a byte model
        self.max_batch, self.max_queue = max_batch, max_queue
        self.metrics = metrics
        self.batch = Batch(self.engine)
        self.waiting: deque[Request] = deque()
        self.cancelled: list[Request] = []
        self.running: list[Request] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="bolmo-scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout=30)

    def submit(self, request: Request) -> None:
        with self.cond:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(request)
            self.metrics.queue_depth.set(len(self.waiting))
            self.cond.notify()

    def cancel(self, request: Request) -> None:
        """The client went away: drop its rows before the next step (or never start them)."""
        with self.cond:
            if request in self.waiting:
                self.waiting.remove(request)
                self.metrics.queue_depth.set(len(self.waiting))
            else:
                self.cancelled.append(request)
            self.cond.notify()

    # --- the scheduler thread ---------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.cond:
                    while not (self.stopping or self.waiting or self.batch.rows or self.cancelled):
                        self.cond.wait()
                    if self.stopping:
                        return
                    gone = [r for r in self.running if r in self.cancelled]
                    self.cancelled.clear()
                    admitted = self._admit()
                try:
                    self._leave(gone)
                    for request in admitted:
                        self._join(request)
                    if self.batch.rows:
                        self._step()
                except Exception as exc:  # noqa: BLE001 - a failed step must not stop the server
                    self._fail(exc)
                self.metrics.batch_size.set(len(self.batch.rows))

    def _admit(self) -> list[Request]:
        """Waiting requests that fit in the free rows, first come first served (under the lock)."""
        admitted, free = [], self.max_batch - len(self.batch.rows)
        while self.waiting and len(self.waiting[0].choices) <= free:
            request = self.waiting.popleft()
            free -= len(request.choices)
            admitted.append(request)
        self.metrics.queue_depth.set(len(self.waiting))
        return admitted

    def _leave(self, gone: list[Request]) -> None:
        if gone:
            self.batch.leave([c.row for r in gone for c in r.choices if c.row is not None])
            self.running = [r for r in self.running if r not in gone]

    def _join(self, request: Request) -> None:
        try:
            sampler, rows, prompt_logprobs = RowSampler(device=self.engine.device), [], []
            for choice in request.choices:
                data = choice.prompt.encode("utf-8")
                choice.row = Row(self.engine.encode(choice.prompt), Continuation(choice.options), data)
                prompt_logprobs.append(self._prompt_logprobs(choice) if request.echo else [])
                if not choice.row.done:
                    rows.append(choice.row)
                    sampler.add_row(choice.options.sampling, choice.seed)
            self.batch.join(rows, sampler)
        except Exception as exc:  # noqa: BLE001 - reported to this request only
            self.batch.leave([c.row for c in request.choices if c.row is not None])
            request.post(Update(0, "", b"", [], [], "error", error=f"{type(exc).__name__}: {exc}"))
            return
        for choice, logprobs in zip(request.choices, prompt_logprobs):
            row = choice.row
            if request.echo or request.patches:
                request.post(Update(choice.index, choice.prompt if request.echo else "", row.prompt,
                                    row.prompt_boundaries, logprobs, prompt=True))
            if row.done:  # nothing to generate (max_tokens 0)
                choice.reported_done = True
                request.post(Update(choice.index, "", b"", [], [], row.continuation.finish_reason))
        if not request.done:
            self.running.append(request)

    def _prompt_logprobs(self, choice: Choice) -> list[ByteLogprob]:
        if choice.top_logprobs is None or not choice.prompt:
            return []
        table = byte_distributions(self.model, choice.prompt)
        return byte_logprob_entries(table, choice.row.prompt, choice.top_logprobs)

    def _step(self) -> None:
        started = time.perf_counter()
        with_logprobs = {id(c.row): c for r in self.running for c in r.choices if c.top_logprobs is not None}
        wanted = [(i, with_logprobs[id(row)]) for i, row in enumerate(self.batch.rows) if id(row) in with_logprobs]
        tables = None
        if wanted:  # before the step: the logits that the step samples from
            index = torch.tensor([i for i, _ in wanted], device=self.batch.logits.device)
            tables = folded_byte_logprobs(self.batch.logits[index]).cpu()
        self.batch.step()
        if wanted:
            for (_, choice), table in zip(wanted, tables):
                row, cont = choice.row, choice.row.continuation
                # A Bolmo step adds one byte unless it ended the row (a stop string's cut bytes
                # drop off with `data`, as their entries do when reported).
                if cont.finish_reason != "eos" and len(cont.data) >= row.steps:
                    byte = bytes((cont.data[row.steps - 1],))
                    choice.generated += byte_logprob_entries(table[None], byte, choice.top_logprobs)
        self.metrics.step_seconds.observe(time.perf_counter() - started)
        for request in self.running:
            for choice in request.choices:
                self._report(request, choice)
        self.running = [r for r in self.running if not r.done]

    def _report(self, request: Request, choice: Choice) -> None:
        row = choice.row
        if row is None or choice.reported_done or not (request.stream or row.done):
            return
        cont = row.continuation
        before = cont.shown
        text = cont.new_text()
        after = cont.shown
        if not text and after == before and not row.done:
            return
        self.metrics.generated_bytes.inc(after - before)
        request.post(Update(choice.index, text, bytes(cont.data[before:after]), row.boundaries[before:after],
                            choice.generated[before:after], cont.finish_reason if row.done else None))
        choice.reported_done = row.done

    def _fail(self, exc: Exception) -> None:
        """Report an unexpected error to every running request and start over with no rows."""
        for request in self.running:
            request.post(Update(0, "", b"", [], [], "error", error=f"{type(exc).__name__}: {exc}"))
        self.running = []
        self.batch = Batch(self.engine)


def byte_logprob_entries(table: torch.Tensor, data: bytes, top: int) -> list[ByteLogprob]:
    """Per byte of `data`: its log-prob in `table` [len(data), 256] and the `top` likeliest bytes."""
    chosen = table[torch.arange(len(data)), torch.tensor(list(data), dtype=torch.long)].tolist()
    values, ids = table.topk(max(top, 1), dim=-1)
    return [(b, lp, list(zip(i[:top], v[:top]))) for b, lp, v, i in zip(data, chosen, values.tolist(), ids.tolist())]

"""Continuous batching under load: 32 simultaneous streaming clients against a server that runs
at most 12 rows at a time, so requests queue, join the running batch between steps, and leave it
at different lengths. Every response equals the same request served alone."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

import bolmo
from bolmo.serve import ServeConfig
from serve_helpers import serving

WORDS = ["The json module", "import os\n", "def f(x):", "héllo wörld", "Return the", "class A:", "# ", "The"]


def request_of(i: int) -> dict:
    """Prompt, length and sampling of client i (every fourth samples with its own seed)."""
    sampled = i % 4 == 3
    return {"prompt": WORDS[i % len(WORDS)] + " " * (i // len(WORDS)), "max_tokens": 8 + (i * 7) % 50,
            "temperature": 0.8 if sampled else 0.0, "seed": 100 + i if sampled else None}


@pytest.fixture(scope="module")
def model():
    return bolmo.load()


def test_32_streaming_clients_each_get_their_solo_response(model):
    requests = [request_of(i) for i in range(32)]
    expected = [model.generate([r["prompt"]], max_new_bytes=r["max_tokens"], temperature=r["temperature"],
                               seed=r["seed"])[0] for r in requests]

    async def one(client: openai.AsyncOpenAI, request: dict) -> str:
        stream = await client.completions.create(model="bolmo", stream=True, **request)
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def everyone(url: str) -> list[str]:
        client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=300)
        try:
            return await asyncio.gather(*(one(client, r) for r in requests))
        finally:
            await client.close()

    with serving(model, ServeConfig(max_batch=12, max_queue=64)) as running:
        got = asyncio.run(everyone(running.v1))
        metrics = httpx.get(running.url + "/metrics").text
    assert got == expected
    steps = next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith("bolmo_step_seconds_count"))
    assert steps < sum(len(text.encode()) for text in got) / 4  # rows really shared steps

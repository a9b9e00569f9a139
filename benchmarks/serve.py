# python benchmarks/serve.py [--requests 32] [--max-tokens 128]
"""`bolmo serve` under 1, 8 and 32 concurrent clients versus sequential `bolmo generate`, with the
bundled model, greedy.

The server runs as its own process (`bolmo serve`, continuous batching, --max-batch 32); the
clients are httpx coroutines in this process, each taking the next of the same request list
(non-streamed completions). The reference runs the same requests one after another in this process
through `model.generate`, i.e. what `bolmo generate` does per call without its interpreter start
and model load, which one real `bolmo generate` process is timed for separately. Latency is from
sending a request to its last byte; throughput is new bytes over wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

import bolmo
from common import report

WORDS = ["The json module", "import os\n", "def f(x):", "Return the", "class A:", "The", "# ", "A list"]
CLI = "import sys; from bolmo.cli import main; sys.exit(main(sys.argv[1:]))"


def prompts(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] + " " * (i // len(WORDS)) for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def row(mode: str, clients: int, latencies: list[float], n_bytes: int, wall: float, base: float | None) -> dict:
    rate = n_bytes / wall
    return {"mode": mode, "clients": clients, "requests": len(latencies), "bytes": n_bytes, "wall_s": round(wall, 2),
            "bytes_per_s": round(rate, 1), "p50_s": round(percentile(latencies, 50), 3),
            "p95_s": round(percentile(latencies, 95), 3), "speedup": round(rate / base, 2) if base else 1.0}


def sequential(requests: list[str], max_tokens: int) -> dict:
    model = bolmo.load()
    model.generate(["warm up"], max_new_bytes=8)
    latencies, n_bytes, start = [], 0, time.perf_counter()
    for prompt in requests:
        t = time.perf_counter()
        n_bytes += len(model.generate([prompt], max_new_bytes=max_tokens)[0].encode())
        latencies.append(time.perf_counter() - t)
    return row("sequential generate", 1, latencies, n_bytes, time.perf_counter() - start, None)


def cli_process(max_tokens: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", CLI, "generate", "The json module", "--max-new-bytes", str(max_tokens)],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


async def clients(url: str, requests: list[str], n_clients: int, max_tokens: int) -> tuple[list[float], int, float]:
    queue = list(requests)
    latencies, sizes = [], []

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            prompt = queue.pop(0)
            t = time.perf_counter()
            r = await http.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens,
                                                               "temperature": 0})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t)
            sizes.append(r.json()["usage"]["completion_tokens"])

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(n_clients)))
    return latencies, sum(sizes), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    requests = prompts(args.requests)
    reference = sequential(requests, args.max_tokens)
    rows = [reference]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--port", str(port), "--max-batch", "32"],
                              env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        asyncio.run(clients(url, ["warm up"], 1, 8))
        for n in (1, 8, 32):
            latencies, n_bytes, wall = asyncio.run(clients(url, requests, n, args.max_tokens))
            rows.append(row("bolmo serve", n, latencies, n_bytes, wall, reference["bytes_per_s"]))
    finally:
        server.terminate()
        server.wait()
    settings = {"model": "bundled default", "requests": args.requests, "max_tokens": args.max_tokens,
                "greedy": True, "bolmo_generate_process_s": round(cli_process(args.max_tokens), 2)}
    report("serve", rows, ["mode", "clients", "requests", "bytes", "wall_s", "bytes_per_s", "p50_s", "p95_s",
                           "speedup"], settings)


if __name__ == "__main__":
    main()

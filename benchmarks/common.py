"""Shared benchmark helpers: models to time, timing, and the table + JSON report."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import bolmo
from bolmo.config import BolmoConfig
from bolmo.loading import build_tokenizer
from bolmo.model.bolmo import BolmoForCausalLM
from bolmo.nn import freed_memory

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "bolmo" / "tiny-gqa"
RESULTS = ROOT / "benchmarks" / "results"


def fixture_model(dtype: torch.dtype = torch.float32) -> BolmoForCausalLM:
    return bolmo.load(FIXTURE_MODEL, dtype=dtype)


def bolmo_1b_local_config() -> BolmoConfig:
    """Bolmo-1B's local sizes (d 2048, 1 encoder + 4 decoder mLSTM layers, 16 heads, FF 2816,
    100,278-row subword table) with only 2 global layers, so it fits a small machine."""
    config = BolmoConfig.preset("bolmo-1b")
    config.num_hidden_layers = 2
    config.layer_types = ["full_attention"] * 2
    # The fixture's 1,000-entry subword tokenizer drives the expansion (ids stay < 100,278).
    config.tokenizer_config.original_identifier = str(FIXTURE_MODEL / "subword_tokenizer")
    config.validate()
    return config


def random_model(config: BolmoConfig, dtype: torch.dtype = torch.float32, seed: int = 0) -> BolmoForCausalLM:
    """Random weights at the scale of a trained model (matrices ~ N(0, 1/fan_in)); the process's
    allocator set as `bolmo.load` sets it for a CPU model (bolmo.nn.freed_memory)."""
    freed_memory.keep_freed_memory()
    torch.manual_seed(seed)
    model = BolmoForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5 if "embedding" not in name else 1.0)
            else:
                p.normal_(0.0, 0.1)
    model.tokenizer = build_tokenizer(config, None)
    return model.to(dtype).eval()


def stream_bandwidth(megabytes: int = 512, repeats: int = 3) -> float:
    """Memory bandwidth in GB/s as this process sees it: the best of `repeats` sums over a
    float32 tensor far larger than any cache (same thread setting as the caller)."""
    x = torch.ones(megabytes * 2**20 // 4)
    best = min(time_call(lambda: x.sum(), 1, warmup=1 if i == 0 else 0) for i in range(repeats))
    return x.numel() * 4 / best / 1e9


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def format_cell(value: object) -> str:
    """Floats to one decimal, except small ones (a ratio, a shift in bits per byte): 4 significant digits."""
    if isinstance(value, float):
        return f"{value:,.1f}" if value == 0 or abs(value) >= 10 else f"{value:.4g}"
    return str(value)


def report(name: str, rows: list[dict], columns: list[str], settings: dict) -> None:
    """Print a table, write benchmarks/results/<name>.json, end with one JSON line."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=name)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(format_cell(row[c]) for c in columns))
    Console(width=240).print(table)  # wide tables stay readable in logs and pipes
    payload = {
        "benchmark": name,
        "settings": settings,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                    "bolmo_keeps_freed_memory": freed_memory.in_effect()},
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload))

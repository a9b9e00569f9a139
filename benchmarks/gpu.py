# python benchmarks/gpu.py [--models bolmo-1b bolmo-7b] [--batches 1 8 64] [--new-bytes 256] [--prompt-bytes 512]
#                          [--engines eager compiled] [--bytes-per-token 4.0] [--reference ../shared/reference] [--dry-run]
"""Bolmo on a GPU: prefill and decode bytes/s at batch 1, 8 and 64 for random Bolmo-1B- and
Bolmo-7B-shaped models in bfloat16, against the subword Olmo model with the same global
transformer (the paper's comparison: Bolmo 7B decodes about 125 bytes/s, Olmo 3 7B about 150),
and against the reference implementation at batch 1 where it fits (`--reference`).

The subword model's tokens/s are converted to bytes/s with `--bytes-per-token` (default 4.0, a
typical figure for English text and a 100k-entry BPE vocabulary; its random weights emit random
tokens, so its own output cannot give a meaningful figure). Bolmo's figures count real new bytes.
Compiled engine: torch.compile of each whole decode step, `mode="reduce-overhead"` (CUDA graphs
where the step allows them). `cudagraph_skips` counts the compiled graphs torch ran without CUDA
graphs during a measurement (torch logs why: cudagraph trees skip a graph whose non-static inputs
it writes in place, as the step writes the mLSTM states and KV cache); 0 means every step
replayed CUDA graphs. Untested on a GPU so far: read this column first.

`--dry-run` runs every code path on the CPU with the same model families shrunk to a tiny width
(float32, batches 1 and 2, a few bytes), so the script is known to work before a GPU is at hand;
its figures mean nothing. Without --dry-run the script needs CUDA and stops if there is none.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from bolmo.config import BolmoConfig
from bolmo.generation.compiled import COMPILE_ENV
from bolmo.generation.kv_cache import KVCache, prefill
from bolmo.model.olmo import OlmoForCausalLM
from bolmo.olmo.config import OlmoConfig
from common import FIXTURE_MODEL, random_model, report
from generate import TEXTS, timed_run


def bolmo_config(name: str, dry_run: bool) -> BolmoConfig:
    config = BolmoConfig.preset(name)
    if dry_run:  # the same family, shrunk: local and global layers of a tiny width
        config.hidden_size, config.intermediate_size, config.local_intermediate_size = 64, 128, 96
        config.num_attention_heads = config.num_key_value_heads = config.num_local_heads = 4
        config.num_hidden_layers = 2
        config.layer_types = config.layer_types[:2]
        config.subword_vocab_size = 1000
    # The fixture's 1,000-entry subword tokenizer drives the expansion (ids stay within the table).
    config.tokenizer_config.original_identifier = str(FIXTURE_MODEL / "subword_tokenizer")
    config.validate()
    return config


def olmo_twin(config: BolmoConfig) -> OlmoConfig:
    """The subword Olmo 3 model with Bolmo's global transformer (its 100,278-entry vocabulary)."""
    return OlmoConfig(model_type="olmo3", vocab_size=100278 if config.hidden_size > 64 else 1000,
                      hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                      num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                      num_key_value_heads=config.num_key_value_heads, rope_theta=config.rope_theta,
                      rope_scaling=config.rope_scaling, rms_norm_eps=config.rms_norm_eps,
                      sliding_window=config.sliding_window, layer_types=list(config.layer_types),
                      max_position_embeddings=config.max_position_embeddings)


def random_olmo(config: OlmoConfig, device: torch.device, dtype: torch.dtype) -> OlmoForCausalLM:
    torch.manual_seed(0)
    with torch.device(device):
        model = OlmoForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5 if "embed" not in name else 1.0)
    return model.to(dtype).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bolmo_rates(model, batch: int, prompt_bytes: int, new_bytes: int, compiled: bool, device: torch.device
                ) -> tuple[float, float]:
    """(prefill bytes/s, decode bytes/s) for `batch` prompts of `prompt_bytes` bytes."""
    prompts = [(TEXTS[i % len(TEXTS)] * (prompt_bytes // 20 + 1)).encode()[:prompt_bytes].decode("utf-8", "ignore")
               for i in range(batch)]
    sync(device)
    t = timed_run(model, prompts, new_bytes, compiled)
    sync(device)
    prompt_total = sum(len(p.encode()) for p in prompts)
    return prompt_total / t.prefill_s, t.new_bytes / sum(t.step_s)


def olmo_rates(model: OlmoForCausalLM, batch: int, prompt_tokens: int, new_tokens: int, device: torch.device
               ) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s): greedy KV-cached decoding of random prompt tokens
    with the KV cache Bolmo's global model uses (the subword generator's own loop adds only its
    host-side bookkeeping)."""
    inner = model.model
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_tokens), device=device)
    with torch.inference_mode():
        sync(device)
        start = time.perf_counter()
        hidden, keys, values = prefill(inner.layers, inner.embed_tokens(ids))
        token = model.lm_head(inner.norm(hidden[:, -1])).argmax(-1)
        sync(device)
        prefill_s = time.perf_counter() - start
        rows = [[k[r: r + 1] for k in keys] for r in range(batch)], [[v[r: r + 1] for v in values] for r in range(batch)]
        cache = KVCache.from_rows(inner.layers, *rows, device, model.dtype)
        every_row = list(range(batch))
        start = time.perf_counter()
        for _ in range(new_tokens):
            hidden = cache.step(inner.embed_tokens(token.unsqueeze(1)), None, every_row)
            token = model.lm_head(inner.norm(hidden[:, -1])).argmax(-1)
            token.tolist()  # the host reads every step's tokens, as a generator must
        sync(device)
    return batch * prompt_tokens / prefill_s, batch * new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["bolmo-1b", "bolmo-7b"], choices=["bolmo-1b", "bolmo-7b"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--new-bytes", type=int, default=256)
    parser.add_argument("--prompt-bytes", type=int, default=512)
    parser.add_argument("--engines", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--bytes-per-token", type=float, default=4.0)
    parser.add_argument("--reference", type=Path, default=None, help="reference checkout (batch 1, where it fits)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: check the script, not the GPU")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
        args.batches, args.new_bytes, args.prompt_bytes = [1, 2], 8, 24
    elif not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs CUDA (pass --dry-run to check it on the CPU with tiny shapes)")
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16

    rows = []
    for name in args.models:
        config = bolmo_config(name, args.dry_run)
        with torch.device(device):
            model = random_model(config, dtype)
        with torch.no_grad():
            model.lm_head.weight[[0, 1, 2, 3, 260, 261, 262, 263]] = 0.0  # no early EOS
        olmo = random_olmo(olmo_twin(config), device, dtype)
        reference_rate = math.nan
        if args.reference is not None and 1 in args.batches:
            from reference import Reference, save_hf

            ref = Reference(args.reference, save_hf(model, Path(tempfile.mkdtemp(prefix="bolmo-gpu-"))), torch.get_num_threads(),
                            device=str(device), dtype=str(dtype).removeprefix("torch."))
            prompt_ids = model.tokenizer.encode((TEXTS[0] * 40)[: args.prompt_bytes])
            ref.generate([prompt_ids], 8)  # warm-up
            reply = ref.generate([prompt_ids], args.new_bytes)
            reference_rate = len(reply["new_ids"][0]) / reply["seconds"]
            ref.close()
        prompt_tokens = max(1, round(args.prompt_bytes / args.bytes_per_token))
        new_tokens = max(1, round(args.new_bytes / args.bytes_per_token))
        olmo_rates(olmo, 1, prompt_tokens, 2, device)  # warm-up
        for engine in args.engines:
            bolmo_rates(model, 1, args.prompt_bytes, 4, engine == "compiled", device)  # warm-up / compilation
        for batch in args.batches:
            olmo_prefill, olmo_decode = olmo_rates(olmo, batch, prompt_tokens, new_tokens, device)
            for engine in args.engines:
                skips = counters["inductor"]["cudagraph_skips"]
                prefill_rate, decode_rate = bolmo_rates(model, batch, args.prompt_bytes, args.new_bytes,
                                                        engine == "compiled", device)
                skips = counters["inductor"]["cudagraph_skips"] - skips
                rows.append({
                    "model": name + (" (dry-run shapes)" if args.dry_run else ""), "engine": engine, "batch": batch,
                    "prefill_bytes_per_s": prefill_rate, "decode_bytes_per_s": decode_rate,
                    "olmo_prefill_bytes_per_s": olmo_prefill * args.bytes_per_token,
                    "olmo_decode_bytes_per_s": olmo_decode * args.bytes_per_token,
                    "decode_vs_olmo": round(decode_rate / (olmo_decode * args.bytes_per_token), 2),
                    "decode_vs_reference": round(decode_rate / reference_rate, 2) if batch == 1 and
                    not math.isnan(reference_rate) else "",
                    "cudagraph_skips": skips if engine == "compiled" and device.type == "cuda" else "",
                })
        del model, olmo
        if device.type == "cuda":
            torch.cuda.empty_cache()
    os.environ.pop(COMPILE_ENV, None)
    report(args.name or ("gpu-dry-run" if args.dry_run else "gpu"), rows,
           ["model", "engine", "batch", "prefill_bytes_per_s", "decode_bytes_per_s", "olmo_prefill_bytes_per_s",
            "olmo_decode_bytes_per_s", "decode_vs_olmo", "decode_vs_reference", "cudagraph_skips"],
           {"device": str(device), "dtype": str(dtype), "new_bytes": args.new_bytes, "prompt_bytes": args.prompt_bytes,
            "bytes_per_token": args.bytes_per_token, "dry_run": args.dry_run,
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None})


if __name__ == "__main__":
    main()

# python benchmarks/convert.py [--layers 18] [--repeats 2] [--workdir DIR]
"""Consolidating a sharded DCP checkpoint into HF safetensors: `bolmo convert` (streaming) versus
torch's `dcp_to_torch_save` + `safetensors.torch.save_file`, each in its own process.

The checkpoint (>= 1.5 GB, float32) is written by torch.distributed.checkpoint itself from 2 gloo
ranks holding row-sharded DTensors, with 2 writer threads per rank: 4 data files, and every tensor
split into 2 chunks that live in different files, as after FSDP training. Peak memory is the
child's maximum resident set size (`os.wait4`), wall time includes interpreter start-up.
Goal: peak <= 2 x largest tensor + 300 MB, and no slower than torch's path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import report

VOCAB, D_MODEL, FFN = 50304, 1024, 4096

BOLMO_CLI = "import sys; from bolmo.cli import main; sys.exit(main(sys.argv[1:]))"
TORCH_PATH = """
import sys, torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
src, dst = sys.argv[1], sys.argv[2]
dcp_to_torch_save(src, dst + ".pt")
state = torch.load(dst + ".pt", weights_only=True)["model"]
save_file({k: v.contiguous() for k, v in state.items()}, dst + ".safetensors", metadata={"format": "pt"})
"""


def layout(n_layers: int) -> dict[str, tuple[int, ...]]:
    """A ~400M-parameter decoder in OLMo-core naming (untied 50k-row embeddings)."""
    shapes: dict[str, tuple[int, ...]] = {"embeddings.weight": (VOCAB, D_MODEL)}
    for i in range(n_layers):
        for w in ("w_q", "w_k", "w_v", "w_out"):
            shapes[f"blocks.{i}.attention.{w}.weight"] = (D_MODEL, D_MODEL)
        shapes[f"blocks.{i}.feed_forward.w1.weight"] = (FFN, D_MODEL)
        shapes[f"blocks.{i}.feed_forward.w3.weight"] = (FFN, D_MODEL)
        shapes[f"blocks.{i}.feed_forward.w2.weight"] = (D_MODEL, FFN)
        shapes[f"blocks.{i}.attention_norm.weight"] = (D_MODEL,)
        shapes[f"blocks.{i}.feed_forward_norm.weight"] = (D_MODEL,)
    shapes["lm_head.w_out.weight"] = (VOCAB, D_MODEL)
    return shapes


def _write_rank(rank: int, world: int, path: str, n_layers: int, port: int) -> None:
    """One rank: its row shard of every tensor as a DTensor, saved with torch's own writer."""
    import warnings

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    generator = torch.Generator().manual_seed(rank)
    state = {}
    for name, shape in layout(n_layers).items():
        rows = shape[0] // world
        local = torch.randn((rows, *shape[1:]), generator=generator)
        state[name] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=torch.Size(shape),
                                         stride=torch.empty(shape, device="meta").stride())
    dcp.save({"model": state}, storage_writer=FileSystemWriter(path, thread_count=2))
    dist.destroy_process_group()


def build_checkpoint(path: Path, n_layers: int) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_write_rank, args=(2, str(path), n_layers, port), nprocs=2, start_method="fork")


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a child process."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:4]} failed: {child.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def same_tensors(a: Path, b: Path) -> bool:
    from safetensors import safe_open

    with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
        return set(fa.keys()) == set(fb.keys()) and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=18, help="transformer layers (18: 1.62 GB)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temporary directory)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bolmo-convert-bench-"))
    src = work / "dcp"
    try:
        if not (src / ".metadata").is_file():
            start = time.perf_counter()
            build_checkpoint(src, args.layers)
            print(f"wrote {src} in {time.perf_counter() - start:.1f} s")
        shapes = layout(args.layers)
        data_bytes = sum(torch.Size(s).numel() * 4 for s in shapes.values())
        largest = max(torch.Size(s).numel() * 4 for s in shapes.values())
        files = sorted(p.name for p in src.glob("*.distcp"))
        rows = []
        for repeat in range(args.repeats):
            for method, cmd, out in [
                ("bolmo convert", [sys.executable, "-c", BOLMO_CLI, "convert", str(src), str(work / "ours"),
                                   "--to", "hf", "--overwrite"], work / "ours" / "model.safetensors"),
                ("dcp_to_torch_save + save_file", [sys.executable, "-c", TORCH_PATH, str(src), str(work / "torch")],
                 work / "torch.safetensors"),
            ]:
                wall, peak = measure(cmd)
                rows.append({"method": method, "repeat": repeat, "wall_s": round(wall, 2), "peak_rss_mb": round(peak, 1),
                             "throughput_mb_s": round(data_bytes / 1e6 / wall, 1), "output_mb": round(out.stat().st_size / 1e6, 1)})
        ours = [r for r in rows if r["method"] == "bolmo convert"]
        theirs = [r for r in rows if r["method"] != "bolmo convert"]
        budget = 2 * largest / 2**20 + 300
        settings = {
            "tensors": len(shapes), "data_bytes": data_bytes, "largest_tensor_bytes": largest,
            "dcp_files": files, "chunks_per_tensor": 2, "ranks": 2, "repeats": args.repeats,
            "memory_goal_mb": round(budget, 1),
            "identical_outputs": same_tensors(work / "ours" / "model.safetensors", work / "torch.safetensors"),
            "memory_goal_met": max(r["peak_rss_mb"] for r in ours) <= budget,
            "speed_goal_met": min(r["wall_s"] for r in ours) <= min(r["wall_s"] for r in theirs),
        }
        report("convert", rows, ["method", "repeat", "wall_s", "peak_rss_mb", "throughput_mb_s", "output_mb"], settings)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

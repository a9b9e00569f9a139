"""Write an FSDP2-sharded training checkpoint with 2 gloo processes (used by test_checkpoint_fsdp.py).

    python tests/fsdp_checkpoint_writer.py OUT_DIR

OUT_DIR/checkpoint: DCP with `model.*`, `ema.*`, `optim.*`, `step`, written by torch.distributed.checkpoint
from `fully_shard`ed modules; OUT_DIR/expected.pt: the full model and EMA state dicts, gathered by FSDP.
Like EMA implementations, `ema.*` holds the averaged parameters only, not the model's buffer `pos`.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard


class Tiny(nn.Module):
    """Odd sizes on purpose: 37 rows split 19/18, a [1, 16] parameter whose second shard is empty."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(37, 16)
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(2))
        self.gate = nn.Parameter(torch.randn(1, 16))
        self.head = nn.Linear(16, 3)
        self.register_buffer("pos", torch.arange(5.0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) * self.gate
        for block in self.blocks:
            h = torch.relu(block(h))
        return self.head(h) + self.pos.sum()


def _worker(rank: int, world: int, out: str) -> None:
    warnings.filterwarnings("ignore")
    # Rendezvous through a file, not a port: a port found free and then closed can be taken by any
    # other process on a busy machine before rank 0 binds it.
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out, 'rendezvous')}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model, ema = Tiny(), Tiny()
    ema.load_state_dict(model.state_dict())
    mesh = init_device_mesh("cpu", (world,))
    for module in (model, ema):
        for block in module.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(module, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randint(0, 37, (2, 4))).sum().backward()
    optimizer.step()
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.mul_(0.5).add_(p, alpha=0.5)
    params = {name for name, _ in ema.named_parameters()}
    ema_params = {name: value for name, value in get_model_state_dict(ema).items() if name in params}
    state = {"model": get_model_state_dict(model), "ema": ema_params,
             "optim": get_optimizer_state_dict(model, optimizer), "step": 1}
    dcp.save(state, checkpoint_id=os.path.join(out, "checkpoint"))
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    expected = {"model": get_model_state_dict(model, options=full), "ema": get_model_state_dict(ema, options=full)}
    if rank == 0:
        torch.save(expected, os.path.join(out, "expected.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    # fork: the workers inherit the imported torch instead of importing it again (seconds per process)
    mp.start_processes(_worker, args=(2, sys.argv[1]), nprocs=2, start_method="fork")

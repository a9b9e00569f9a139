"""bolmo.nn.freed_memory: after bolmo.load on a CPU, memory a forward frees is reused without page
faults; BOLMO_KEEP_FREED_MEMORY=0 leaves glibc's defaults. Each case runs in a fresh process,
since the allocator's settings are the process's."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import BOLMO_FIXTURES

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc's")

# Load the fixture model (which applies the settings), then:
# * hold a 30 MB block and read how much memory glibc holds in mappings of their own (mallinfo2's
#   hblkhd): with its defaults (mmap threshold 128 KB, raised only by freeing bigger mappings, which
#   the tiny model never makes) the block is such a mapping; with the settings (32 MB) it is not;
# * three times allocate and free 64 MB as 4 MB blocks and 64 MB as 16 MB blocks, counting the
#   minor page faults of the third round: kept memory is reused without faults.
SCRIPT = """
import ctypes, json, resource, sys, torch, bolmo
from bolmo.nn import freed_memory
bolmo.load(sys.argv[1])
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblkhd
block = torch.ones(30 << 18)
mapped = libc.mallinfo2().hblkhd - before
del block
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for count, numel in ((16, 1 << 20), (4, 1 << 22)):
        blocks = [torch.ones(numel) for _ in range(count)]
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(), faults()
print(json.dumps({"in_effect": freed_memory.in_effect(), "applied": freed_memory.keep_freed_memory(),
                  "mapped": mapped, "faults": faults()}))
"""
PAGES = 2 * (64 << 20) // 4096  # the pages one round touches
BLOCK = 30 << 20


def run(environment: dict[str, str]) -> dict:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(BOLMO_FIXTURES / "tiny-gqa")], capture_output=True,
                            text=True, env={**inherited, **environment}, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_load_keeps_freed_memory_for_reuse():
    outcome = run({})
    assert outcome["applied"] is True and outcome["in_effect"] is True  # set by bolmo.load
    assert outcome["mapped"] < BLOCK, outcome  # the 30 MB block came from the heap
    assert outcome["faults"] < PAGES // 20, outcome  # freed blocks came back without faulting their pages in


def test_opt_out_leaves_glibc_defaults():
    outcome = run({"BOLMO_KEEP_FREED_MEMORY": "0"})
    assert outcome["applied"] is False and outcome["in_effect"] is False
    assert outcome["mapped"] >= BLOCK, outcome  # glibc's own threshold: a mapping of its own

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

# Load the fixture model (which applies the settings), then three times allocate and free 64 MB as
# 4 MB blocks and 64 MB as 16 MB blocks, counting the minor page faults of the third round: with
# glibc's defaults the freed memory goes back to the system and the round faults its pages in again
# (about 32,000); kept memory is reused without faults.
SCRIPT = """
import json, resource, sys, torch, bolmo
from bolmo.nn import freed_memory
bolmo.load(sys.argv[1])
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for count, numel in ((16, 1 << 20), (4, 1 << 22)):
        blocks = [torch.ones(numel) for _ in range(count)]
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(), faults()
print(json.dumps({"applied": freed_memory.keep_freed_memory(), "faults": faults()}))
"""
PAGES = 2 * (64 << 20) // 4096  # the pages one round touches


def run(environment: dict[str, str]) -> dict:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(BOLMO_FIXTURES / "tiny-gqa")], capture_output=True,
                            text=True, env={**os.environ, **environment}, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_load_keeps_freed_memory_for_reuse():
    outcome = run({})
    assert outcome["applied"] is True
    assert outcome["faults"] < PAGES // 20, outcome  # freed blocks came back without faulting their pages in


def test_opt_out_leaves_glibc_defaults():
    outcome = run({"BOLMO_KEEP_FREED_MEMORY": "0"})
    assert outcome["applied"] is False
    assert outcome["faults"] > PAGES // 4, outcome  # the defaults hand the memory back: faulted in again

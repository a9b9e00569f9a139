"""Keep the memory a process frees for its own reuse (glibc malloc), instead of handing it back to
the operating system after every forward pass.

Why: a CPU forward allocates and frees hundreds of tensors of 0.1-32 MB. glibc serves blocks
above its mmap threshold (128 KB at first, rising to the largest block freed so far) with fresh
mappings, and returns free memory at the top of its heap to the system once it exceeds its trim
threshold (twice the mmap threshold). Either way the next forward touches pages the system must
fault in and zero again: up to 145,000 minor page faults per forward of a `d256` model over
1,000-8,000 bytes on this repository's benchmark VM, varying from run to run with the heap's
history, and a fault costs microseconds in a virtual machine (a [3931, 1024] `silu` right after the
product that made its input: 15 ms with its output's 3,931 faults, 5 ms without). With the mmap
threshold fixed at glibc's largest value and trimming above 2 GiB only, the same forwards take
0-900 faults and run about 1.1x faster, and steadier (medians over alternating processes: 55-64
against 70-73 ms at 1,000 bytes, 609-623 against 641-679 ms at 8,000). Nothing here is specific to
bolmo's code: the reference implementation gains about as much from the same settings
(`benchmarks/forward.py --reference-allocator bolmo`). The cost: the process's resident memory
stays at its peak instead of shrinking after a forward (blocks above 32 MB are still mapped and
unmapped as before), as with torch's CUDA caching allocator.

`bolmo.load` applies it for CPU models, once per process; `BOLMO_KEEP_FREED_MEMORY=0` turns it off.
A process that builds its models otherwise (transformers' `from_pretrained`, a model made from a
config) can call `keep_freed_memory()` itself. Other C libraries (macOS, musl) are left alone.
The same settings as environment variables (`GLIBC_ENVIRONMENT`) give another process, e.g. the
reference implementation in a benchmark, the same behaviour.
"""

from __future__ import annotations

import ctypes
import platform

from bolmo.config import env_switch

KEEP_FREED_MEMORY_ENV = "BOLMO_KEEP_FREED_MEMORY"
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit (HEAP_MAX_SIZE / 2): bigger blocks stay mapped
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: free memory beyond 2 GiB at the heap's top still goes back
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
GLIBC_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

_applied: bool | None = None  # the first call's answer, for the life of the process


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring), once per process. True where
    they are in effect; False where turned off by BOLMO_KEEP_FREED_MEMORY=0 or not on glibc."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def in_effect() -> bool:
    """Whether an earlier keep_freed_memory() set the thresholds (without setting them now)."""
    return _applied is True


def _set_thresholds() -> bool:
    if not env_switch(KEEP_FREED_MEMORY_ENV, True):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Fixing the mmap threshold also stops glibc from raising it on its own, so set both.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

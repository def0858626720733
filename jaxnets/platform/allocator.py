"""glibc malloc settings for fast XLA:CPU programs (a process-wide setting).

`tune_host_allocator()` keeps glibc's malloc from handing freshly mapped pages to every
XLA:CPU execution. By default glibc serves allocations of 32 MiB or more (and, from XLA's
worker threads, smaller ones from per-thread arenas that it trims) with new `mmap`s, so each
call of a compiled step page-faults its large buffers in again: 22,000 minor faults per
call of an LSTM layer (b64 t128 d256 h256), a third of its time. With mmap disabled, one
arena and trimming off, freed memory stays in the process and is reused (LSTM layer and
ResNet step timings with and without it: `python -m benchmarks.lstm`, whose `*_ratio_same_alloc`
fields compare like with like; figures in benchmarks/results). The cost: the process keeps its
peak heap instead of returning it to the OS between steps, which a training process
wants anyway. The CLI (`jaxnets.platform.install`) and the benchmarks call it; research code that
only imports jaxnets modules can call it once at start-up. It is a no-op off glibc, and
`JAXNETS_HOST_ALLOCATOR=default` in the environment turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

from jaxnets.platform.devices import accelerator_expected

# glibc <malloc.h> parameter numbers for mallopt().
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_TRIM_BYTES = -1   # mallopt(3): -1 disables trimming completely
# The same settings as an environment value, for processes jaxnets does not run itself
# (the benchmarks give it to their PyTorch peers to compare like with like).
GLIBC_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                  "glibc.malloc.trim_threshold=18446744073709551615")
_applied: bool | None = None


def tune_host_allocator() -> bool:
    """Apply the malloc settings above once per process; returns whether they are active."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    # A CPU back-end setting: a GPU/TPU process keeps glibc's defaults.
    if os.environ.get("JAXNETS_HOST_ALLOCATOR", "tuned") == "default" or accelerator_expected():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        _ = libc.gnu_get_libc_version   # glibc only (AttributeError elsewhere): other libcs have other knobs
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; apply all three or report failure.
    _applied = all(mallopt(param, value) == 1 for param, value in
                   ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _TRIM_BYTES)))
    return _applied


def host_allocator_state() -> str:
    """'tuned' or 'default', for benchmark and run metadata."""
    return "tuned" if _applied else "default"



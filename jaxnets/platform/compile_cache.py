"""JAX's persistent compilation cache under $JAXNETS_CACHE/xla, and the clock of a run's start.

`jaxnets.platform.install.install_process_settings` (the CLI) turns the cache on; research code
may call `enable_compilation_cache()` itself.
"""
from __future__ import annotations

import os
import time

import jax

from jaxnets.cache import cache_root

# When jaxnets.platform was first imported (`jaxnets` imports it first thing): the start of a
# run's clock for time_to_first_step_s in final.json.
PROCESS_START = time.time()

COMPILATION_CACHE_MAX_BYTES = 2 << 30   # least recently used programs go beyond this


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache under $JAXNETS_CACHE/xla; returns its folder.

    Why: a one-step MNIST smoke compiles ~30 programs (init, train and eval steps, metrics,
    checkpoint digests); with the cache a repeated run loads them instead. Every program is
    kept however quick its compilation (JAX's default keeps only those over 1 s, which here is
    almost none of them), the folder is bounded to COMPILATION_CACHE_MAX_BYTES (here, at start:
    JAX's own bound needs the `filelock` package), and `JAXNETS_COMPILATION_CACHE=0` turns it off. `jaxnets train` (the
    Trainer), the benchmarks and the tests call it. Safe to call more than once; the settings
    are JAX's own (`jax_compilation_cache_dir`, ...), so an explicit JAX_COMPILATION_CACHE_DIR
    in the environment wins.
    """
    track_compile_time()
    if os.environ.get("JAXNETS_COMPILATION_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    folder = jax.config.jax_compilation_cache_dir or str(cache_root() / "xla")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # custom_partitioning (the native filter gradient's sharding rule) puts a Python object's
    # id into the program; without this every run's train step would miss the cache.
    jax.config.update("jax_remove_custom_partitioning_ptr_from_cache_key", True)
    _bound_folder(folder, COMPILATION_CACHE_MAX_BYTES)
    return folder


def _bound_folder(folder: str, max_bytes: int) -> None:
    """Delete the least recently used files until the folder holds at most 3/4 of max_bytes."""
    try:
        entries = [(e.stat().st_atime, e.stat().st_size, e.path) for e in os.scandir(folder) if e.is_file()]
    except OSError:
        return
    total = sum(size for _, size, _ in entries)
    if total <= max_bytes:
        return
    for _, size, path in sorted(entries):
        if total <= max_bytes * 3 // 4:
            break
        try:
            os.unlink(path)
            total -= size
        except OSError:
            pass


_compile_seconds = [0.0]


def _count_compile_time(event: str, seconds: float, **_) -> None:
    # Tracing, lowering and XLA compilation (or loading from the persistent cache) of programs.
    if event.startswith("/jax/core/compile/"):   # backend_compile includes cache reads
        _compile_seconds[0] += seconds


def track_compile_time() -> None:
    """Start summing the seconds this process spends compiling (JAX's monitoring events)."""
    if not getattr(track_compile_time, "on", False):
        jax.monitoring.register_event_duration_secs_listener(_count_compile_time)
        track_compile_time.on = True


def compile_seconds() -> float:
    return _compile_seconds[0]

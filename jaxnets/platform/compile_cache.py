"""JAX's persistent compilation cache under $JAXNETS_CACHE/xla, and the clock of a run's start.

`jaxnets.platform.install.install_process_settings` (the CLI) turns the cache on; research code
may call `enable_compilation_cache()` itself.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import jax

from jaxnets.cache import cache_root

KERNELS = Path(__file__).resolve().parent.parent / "kernels"

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

    The folder is one per version of the native kernels (`kernels_digest`): a program that calls
    a kernel through custom_partitioning holds, before compilation, only the partitioning op,
    whose Python object JAX leaves out of the cache key (below); the kernel call itself and its
    attributes appear only when XLA partitions the program. Without the digest, a program cached
    before a kernel changed was loaded after it and failed ("Wrong number of attributes" once a
    kernel gained one, session 14). Folders of other versions are removed.
    """
    track_compile_time()
    if os.environ.get("JAXNETS_COMPILATION_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    folder = jax.config.jax_compilation_cache_dir
    if not folder:
        root = cache_root() / "xla"
        folder = str(root / kernels_digest())
        _remove_other_versions(root, folder)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # custom_partitioning (the native filter gradient's sharding rule) puts a Python object's
    # id into the program; without this every run's train step would miss the cache.
    jax.config.update("jax_remove_custom_partitioning_ptr_from_cache_key", True)
    _bound_folder(folder, COMPILATION_CACHE_MAX_BYTES)
    return folder


def kernels_digest(folder: Path = KERNELS) -> str:
    """A short hash of the native kernels' sources and their Python wrappers (`folder`)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix in (".cc", ".h", ".py"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return "kernels-" + digest.hexdigest()[:16]


def _remove_other_versions(root: Path, keep: str) -> None:
    """Programs compiled against other kernel versions (and the flat layout before versions)."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if entry.path == keep:
            continue
        try:
            if entry.is_dir() and entry.name.startswith("kernels-"):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.is_file():
                os.unlink(entry.path)
        except OSError:
            pass


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

"""Process-level settings for fast XLA:CPU programs.

`tune_host_allocator()` keeps glibc's malloc from handing freshly mapped pages to every
XLA:CPU execution. By default glibc serves allocations of 32 MiB or more (and, from XLA's
worker threads, smaller ones from per-thread arenas that it trims) with new `mmap`s, so each
call of a compiled step page-faults its large buffers in again: 22,000 minor faults per
call of an LSTM layer (b64 t128 d256 h256), a third of its time. With mmap disabled, one
arena and trimming off, freed memory stays in the process and is reused:

    LSTM b64 t128 d256 h256 forward        57 -> 37 ms   (2-core CPU, 2026-11-28)
    LSTM b64 t128 d256 h256 forward+backward 157 -> 118 ms
    ResNet-20 train step, batch 128, 1 core  600 -> 480 ms

(`python -m benchmarks.lstm`, `python -m benchmarks.resnet_step`; measured before the
layer's own optimisations, so today's figures are lower.) The cost: the process keeps its
peak heap instead of returning it to the OS between steps, which a training process
wants anyway. `jaxnets train`, the `Trainer` and the benchmarks call it; research code that
only imports jaxnets modules can call it once at start-up. It is a no-op off glibc, and
`JAXNETS_HOST_ALLOCATOR=default` in the environment turns it off.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pathlib
import threading
import time

# When jaxnets.runtime was first imported (`jaxnets train` imports it first thing): the start
# of a run's clock for time_to_first_step_s in final.json.
PROCESS_START = time.time()

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
        libc.gnu_get_libc_version   # glibc only: other libcs have other knobs
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


def cache_root() -> pathlib.Path:
    """$JAXNETS_CACHE, default ~/.cache/jaxnets: built kernels, kernel choices, compiled
    programs (`enable_compilation_cache`) and parsed datasets."""
    root = os.environ.get("JAXNETS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxnets")
    return pathlib.Path(root)


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
    import jax
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
        import jax
        jax.monitoring.register_event_duration_secs_listener(_count_compile_time)
        track_compile_time.on = True


def compile_seconds() -> float:
    return _compile_seconds[0]


def one_device_per_core(count: int | None = None) -> int:
    """Expose the host's cores as `count` (default: all) CPU devices, each single-threaded.

    Why: XLA:CPU spreads one program's ops over threads op by op, which scales poorly for
    the many small convolutions and elementwise ops of a training step; data parallelism
    over per-core devices (the trainer shards the batch over every device of its mesh, and
    batch norm statistics stay global because the step is one sharded program) splits the
    work once. ResNet-56 train step, batch 128, 2-core CPU: 774 ms one device with two
    threads vs 507 ms on two single-threaded devices (`python -m benchmarks.resnet_step
    --cpu-devices 2`). Must run before JAX initialises its backends; a no-op (returning
    the current count) if XLA_FLAGS already fixes the device count. `jaxnets train` does
    it when the experiment's `cpu_devices` (or JAXNETS_CPU_DEVICES) asks (`auto_cpu_devices`).
    """
    from jax._src import xla_bridge
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return int(flags.split("xla_force_host_platform_device_count=")[1].split()[0])
    if xla_bridge.backends_are_initialized():
        raise RuntimeError("one_device_per_core() must run before JAX initialises its backends "
                           "(before the first jax.devices() or computation)")
    count = count or usable_cores()
    os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count={count}"
                               " --xla_cpu_multi_thread_eigen=false").strip()
    return count


def single_threaded_cpu() -> bool:
    """Whether XLA:CPU runs each device on one thread (XLA_FLAGS as `one_device_per_core` sets
    them). Some CPU code paths pay only there: see jaxnets.nn.conv and jaxnets.kernels."""
    return "--xla_cpu_multi_thread_eigen=false" in os.environ.get("XLA_FLAGS", "")


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or a cgroup)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def accelerator_expected() -> bool:
    """Whether JAX may pick a GPU/TPU backend (checked without initialising any backend)."""
    import importlib.metadata
    import importlib.util
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0] != "cpu"
    return bool(importlib.metadata.entry_points(group="jax_plugins")
                or importlib.util.find_spec("libtpu") is not None)


def cpu_devices_setting(value: str | None = None) -> str:
    """JAXNETS_CPU_DEVICES if set, else `value` (a config's `cpu_devices`, default "1"), checked:
    'auto', 'cores' or a positive number; ValueError otherwise."""
    setting = (os.environ.get("JAXNETS_CPU_DEVICES", "").strip() or str(value or "1")).strip()
    if setting not in ("auto", "cores") and not (setting.isdigit() and int(setting) > 0):
        raise ValueError(f"cpu_devices (JAXNETS_CPU_DEVICES or --config.cpu_devices) must be "
                         f"'auto', 'cores' or a positive number, got {setting!r}")
    return setting


def even_split(batch_sizes, cap: int) -> int:
    """The largest device count <= cap that divides every batch size (at least 1)."""
    return max(d for d in range(1, max(cap, 1) + 1) if all(b % d == 0 for b in batch_sizes))


def auto_cpu_devices(batch_sizes, value: str | None = None, limit: int = 0) -> int:
    """Set up the CPU devices for a run whose batches are `batch_sizes`; returns their count.

    The setting (`cpu_devices_setting(value)`): "1" leaves JAX's single multi-threaded CPU
    device; "cores" or "N" force a count; "auto" applies the rule below.

    The rule for "auto" (per-core devices only where measurements say they win):
    1. Only on a CPU-only, single-process run: with a GPU/TPU plugin or in a multi-process
       job JAX's own layout stays (the devices are not ours to split).
    2. Only for steps made of large convolutions and matmuls, which the experiment states by
       setting cpu_devices="auto" (resnet_cifar, mnist_cnn); the default "1" covers the
       rest. Quiet 2-core CPU, wall time, one device -> per-core: ResNet-56 step 774 -> 507
       ms, mnist_cnn smoke 19.3 -> 16.9 s; but lstm_shakespeare 48 -> 61 s, gan (200 steps)
       20 -> 30 s, vae 13 -> 17 s, ddpm (150 steps) 90 -> 114 s: chains of small sequential
       ops lose, because a single-threaded device cannot spread them, while XLA's intra-op
       pool can. The Transformer LM won per-core until its attention and weight gradients
       became plain matmuls, which XLA's pool threads well: it now runs on one device
       (`python -m benchmarks.transformer_step --set cpu_devices=auto` vs the default).
    3. Only where every batch splits evenly: the largest count <= the usable cores (and <=
       `limit` when the config caps its devices) that divides every batch size.
    Under load the rule still held on this project's AVX-512 machine: ResNet-20 step at load
    average 19-20 on 2 cores, per-core / one device 0.79, 0.88, 1.26 (median 0.88;
    `python -m benchmarks.cpu_layout`, benchmarks/results/cpu_layout.json). A machine where it
    does not hold is measured with that benchmark and run with JAXNETS_CPU_DEVICES=1.
    """
    setting = cpu_devices_setting(value)
    if setting == "auto":
        from jaxnets.parallel.distributed import detected_cluster, multi_process_expected
        # Per-core devices are a single-host trick: every multi-process job (launcher, explicit
        # variables or a detected cluster) keeps JAX's own devices.
        if accelerator_expected() or multi_process_expected() or detected_cluster():
            return 1
        cores = usable_cores()
        count = even_split(batch_sizes, min(cores, limit or cores))
        return one_device_per_core(count) if count > 1 else 1
    if setting == "1":   # JAX's own single (multi-threaded) CPU device
        return 1
    return one_device_per_core(None if setting == "cores" else int(setting))


class _Target(threading.local):
    platform: str | None = None


_target = _Target()


@contextlib.contextmanager
def tracing_for(platform: str):
    """While active, `target_platform()` is `platform`: the trainer holds it while tracing its
    steps for its mesh's devices, which are a TPU slice's when `jaxnets compile` targets one
    from this CPU (where `jax.default_backend()` stays "cpu")."""
    saved, _target.platform = _target.platform, platform
    try:
        yield
    finally:
        _target.platform = saved


def target_platform() -> str:
    """The platform the program being traced will run on ("cpu", "gpu", "tpu"): what kernels
    and backend-specific paths are chosen by, never `jax.default_backend()` directly."""
    if _target.platform is not None:
        return _target.platform
    import jax
    return jax.default_backend()


# Layer stacks up to this deep are unrolled on CPU (compile time grows with the depth).
_CPU_UNROLL_MAX_LAYERS = 12


def layer_scan_unroll(num_layers: int) -> int:
    """`unroll` for the lax.scan over a stack of identical layers (`scan_layers=True`).

    On CPU, XLA runs the scan as a while loop that copies every layer's saved activations into
    stacked buffers (initialised by broadcasts) for the backward pass: about a sixth of the
    6 x 384 LM's train step on one core (compare `python -m benchmarks.transformer_step --pin 0
    --sizes large` with and without `--set model.scan_layers=False`). Unrolled, each layer's
    activations keep their own buffers while its parameters stay stacked. GPU/TPU keep the
    loop: one compiled layer, fast compiles for deep stacks.
    """
    if target_platform() == "cpu" and num_layers <= _CPU_UNROLL_MAX_LAYERS:
        return max(num_layers, 1)
    return 1

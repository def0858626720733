"""What the CLI entry point installs once per process, before any work.

    install_process_settings()   # malloc, compilation cache, log filters, orbax barriers, gc

Each is process-wide (glibc's allocator, JAX's global config, loggers and `sys.unraisablehook`),
so nothing below the CLI calls this: constructing a `Trainer` in a notebook changes nothing
global. Research code may call it (or any one of its parts) itself. The CPU device layout
(`jaxnets.platform.devices.auto_cpu_devices`) needs the experiment's batch sizes and is set by
`jaxnets train` once it has read the config.
"""
from __future__ import annotations

import gc

import jax

from jaxnets.platform.allocator import tune_host_allocator
from jaxnets.platform.checkpoint_sync import use_coordination_service_barriers
from jaxnets.platform.compile_cache import enable_compilation_cache, track_compile_time
from jaxnets.platform.devices import accelerator_expected
from jaxnets.platform.logs import quiet_third_party_tracebacks


def install_process_settings() -> None:
    skip_absent_accelerators()     # no libtpu start-up (and its warnings) on a host without TPUs
    tune_host_allocator()          # reuse freed pages instead of faulting in each step's buffers
    track_compile_time()           # final.json's compile_s
    enable_compilation_cache()     # a repeated run loads its compiled programs
    quiet_third_party_tracebacks()
    use_coordination_service_barriers()   # orbax's barriers off the devices (a multi-process hang)
    freeze_imported_objects()


def skip_absent_accelerators() -> None:
    """JAX's platforms = cpu when no GPU/TPU is expected (`accelerator_expected`: JAX_PLATFORMS
    unset and no installed plugin's chip present). An installed libtpu (the `tpu` extra, for
    `jaxnets compile`) would otherwise be started by every process on a CPU host, print its
    warnings and fail before JAX fell back to the CPU. TPU targets still compile: they load
    libtpu's compiler themselves, not as a backend."""
    if not accelerator_expected():
        jax.config.update("jax_platforms", "cpu")


def freeze_imported_objects() -> None:
    """Move every object alive now (what jax, flax, orbax and grain created when imported)
    to the garbage collector's permanent generation, so a full collection scans only what the
    run creates after this. Without it each full collection walked every imported module's
    objects while holding the GIL, stalling orbax's save threads and the steps around them
    (the warm one-step start: benchmarks/results/startup.json). Nothing is leaked: frozen
    objects are the modules' own, alive for the whole process anyway."""
    gc.collect()
    gc.freeze()

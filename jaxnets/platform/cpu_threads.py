"""XLA:CPU thread settings that cannot deadlock its collectives, applied before JAX starts.

Several CPU devices in one process (`--xla_force_host_platform_device_count=K`, K > 1) run
their parts of a collective on threads of one shared intra-op pool, and a device waiting at a
rendezvous keeps its thread: when the devices already waiting hold every thread the last one
needs, the step never finishes (or XLA aborts on its rendezvous timeout). Likewise, more
devices than cores (e.g. `jaxnets launch --processes 4` on 2 cores) leave ranks starved inside
a cross-process collective. Measured on a 2-core machine (docs/cluster.md has the commands):
one thread per device (`--xla_cpu_multi_thread_eigen=false`: each device runs its ops on
its own thread, none borrowed from the pool) is what the tests always used. The hang of
`jaxnets launch --processes 2 --devices-per-process 2 -- train ...` after its first checkpoint
had another cause, orbax's device-collective barrier (jaxnets/train/checkpoint.py,
`use_coordination_service_barriers`). `cpu_thread_flags` is the rule, `apply` adds the flags to
an environment; `jaxnets` calls it for itself and for the ranks of `jaxnets launch`. A flag
already in XLA_FLAGS is respected.
"""
from __future__ import annotations

import os

SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false"
FORCE = "--xla_force_host_platform_device_count="
# XLA:CPU aborts a collective whose participants have not all arrived after 40 s. Devices that
# share a process (and its few cores) with other work can lag that long on a loaded machine
# without anything being wrong: one process with 4 forced devices aborted so at load 7. A dead
# peer process is caught by the coordination service's heartbeats instead (JAXNETS_HEARTBEAT_S).
PATIENT_COLLECTIVES = ("--xla_cpu_collective_timeout_seconds=600",
                       "--xla_cpu_collective_call_terminate_timeout_seconds=600")


def forced_devices(flags: str) -> int:
    """The CPU device count XLA_FLAGS forces (1 when it forces none)."""
    for flag in flags.split():
        if flag.startswith(FORCE):
            try:
                return int(flag[len(FORCE):])
            except ValueError:
                return 1
    return 1


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or a cgroup)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def cpu_thread_flags(flags: str, processes: int = 1, cores: int | None = None) -> list[str]:
    """The XLA flags to add to `flags` (an XLA_FLAGS value) for `processes` local processes:
    one thread per device when several devices share a process or devices outnumber cores, and
    patient in-process collectives when several devices share a process. A flag the user set
    in XLA_FLAGS is left as it is."""
    per_process = forced_devices(flags)
    cores = cores or usable_cores()
    wanted = []
    if per_process > 1 or per_process * processes > cores:
        wanted.append(SINGLE_THREAD)
    if per_process > 1:
        wanted += PATIENT_COLLECTIVES
    return [f for f in wanted if f.split("=")[0] not in flags]


def apply(env: dict, processes: int = 1, cores: int | None = None) -> list[str]:
    """Add the flags `cpu_thread_flags` asks for to env["XLA_FLAGS"]; returns them."""
    flags = env.get("XLA_FLAGS", "")
    added = cpu_thread_flags(flags, processes, cores)
    if added:
        env["XLA_FLAGS"] = " ".join([flags, *added]).strip()
    return added

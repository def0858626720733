"""Joining a multi-controller job: JAX's own runtime (`jax.distributed`), one process per host
(or per GPU), every process running the same program on its share of each global batch.

Three ways in, tried in this order by `initialize()` (which `jaxnets train` calls before anything
touches a backend):
1. explicit: `JAXNETS_COORDINATOR=host:port JAXNETS_NUM_PROCESSES=N JAXNETS_PROCESS_ID=i`
   (what `jaxnets launch` sets for its children; works anywhere); a loopback host
   (127.0.0.1, localhost) makes the coordinator listen on loopback only, not on every interface;
2. a cluster JAX detects by itself: SLURM (`srun`), Open MPI (`mpirun`), Cloud TPU VM pods,
   Kubernetes (with the `kubernetes` package); `jax.distributed.initialize()` reads the
   coordinator, process count and index from the environment (docs/cluster.md);
3. neither: a single-process run.
Heartbeats: a process that dies (SIGKILL, a lost host) makes the others fail within
`JAXNETS_HEARTBEAT_S` seconds (default 30) instead of hanging in a collective forever.
"""
from __future__ import annotations

import os

import jax
from jax._src import clusters

from jaxnets.errors import UserError

EXPLICIT = ("JAXNETS_COORDINATOR", "JAXNETS_NUM_PROCESSES", "JAXNETS_PROCESS_ID")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def detected_cluster() -> str | None:
    """Name of the cluster environment `jax.distributed.initialize()` would read, if any.

    Checked without touching a backend. Mpi4py detection is opt-in in JAX and stays off.
    """
    for env in clusters.ClusterEnv._cluster_types:
        if env.__name__ == "Mpi4pyCluster":
            continue
        try:
            if env.is_env_present():
                return env.__name__.replace("Cluster", "")
        except Exception:   # a detector that cannot run here (e.g. no kubernetes package)
            continue
    return None


def multi_process_expected() -> bool:
    """Whether this process is (about to be) one of several: explicit variables or a cluster
    with more than one task. Used before JAX starts, e.g. to keep CPU device tricks out."""
    if int(os.environ.get("JAXNETS_NUM_PROCESSES", "1")) > 1:
        return True
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES"):
        if int(os.environ.get(var, "1") or 1) > 1:
            return True
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))


def initialize() -> str:
    """Join the job this process belongs to (see the module docstring); returns how: "explicit",
    the detected cluster's name, "already" or "single"."""
    if jax.distributed.is_initialized():
        return "already"
    timeouts = dict(heartbeat_timeout_seconds=int(os.environ.get("JAXNETS_HEARTBEAT_S", "30")),
                    initialization_timeout=int(os.environ.get("JAXNETS_INIT_TIMEOUT_S", "300")),
                    shutdown_timeout_seconds=int(os.environ.get("JAXNETS_SHUTDOWN_TIMEOUT_S", "60")))
    if "JAXNETS_COORDINATOR" in os.environ:
        missing = [v for v in EXPLICIT if v not in os.environ]
        if missing:
            raise UserError(f"JAXNETS_COORDINATOR is set but {', '.join(missing)} is not: set all "
                            f"three ({', '.join(EXPLICIT)}) on every process, or use `jaxnets launch`.")
        address = os.environ["JAXNETS_COORDINATOR"]
        host = address.rsplit(":", 1)[0].strip("[]")
        if host in LOCAL_HOSTS:   # a local job (`jaxnets launch`): listen on loopback only
            timeouts["coordinator_bind_address"] = address
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=int(os.environ["JAXNETS_NUM_PROCESSES"]),
            process_id=int(os.environ["JAXNETS_PROCESS_ID"]), **timeouts)
        return "explicit"
    cluster = detected_cluster()
    if cluster is None:
        return "single"
    jax.distributed.initialize(**timeouts)
    return cluster

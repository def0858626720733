"""How orbax synchronises the processes of a job around a checkpoint (process-wide: absl flags).

orbax's default barrier is `multihost_utils.sync_global_devices`, a device program with a
collective, and orbax runs it from its background save thread while the training thread runs
steps with their own collectives. On CPU (gloo) the all-reduces of the two programs then pair up
in different orders on different processes and both processes wait forever: gdb showed one
device of a rank in gloo's `waitRecv`, the other in `waitSend`, every thread idle. That was the
hang of `jaxnets launch --processes 2 --devices-per-process 2 -- train --config
experiments/mnist_cnn.py:smoke` after its first checkpoint. orbax's other barrier goes through
JAX's coordination service (the distributed client), no device program at all, and orbax
documents it as safe from background threads; `use_coordination_service_barriers` selects it.
"""
from __future__ import annotations

import orbax.checkpoint  # noqa: F401 - defines the flag set below
from absl import flags


def use_coordination_service_barriers() -> None:
    if not flags.FLAGS.is_parsed():   # absl flags at their defaults (grain needs them parsed too)
        flags.FLAGS.mark_as_parsed()
    if "experimental_orbax_use_distributed_barrier" in flags.FLAGS:
        flags.FLAGS.experimental_orbax_use_distributed_barrier = True

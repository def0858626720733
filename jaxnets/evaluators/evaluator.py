"""The evaluator contract and what the trainer hands an evaluator when it runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxnets.parallel.sharding import axis_rules


@dataclass
class EvalContext:
    """`mesh` and `rules`: the trainer's mesh and logical-axis rules; `step`: the training step
    evaluated; `workdir`: the run's."""

    mesh: Mesh
    rules: tuple
    step: int
    workdir: str

    def call(self, fn: Callable, *args) -> Any:
        """`fn(*args)` compiled over the mesh with a replicated result, as host NumPy arrays.

        Arrays of the training state keep their shardings; host (NumPy) arguments are placed
        replicated on the mesh. Every process calls this with the same arguments (an SPMD
        program) and every process gets the whole result, so evaluators never gather the state."""
        replicated = NamedSharding(self.mesh, PartitionSpec())
        placed = jax.tree.map(
            lambda x: x if isinstance(x, jax.Array) else jax.device_put(np.asarray(x), replicated), args)
        with axis_rules(self.mesh, self.rules):   # as the train and eval steps run
            out = jax.jit(fn, out_shardings=replicated)(*placed)
        return jax.tree.map(np.asarray, out)


class Evaluator:
    """Base class. `every`: run every N training steps (0: only at the end of the run)."""

    def __init__(self, name: str, options: dict, task, dataset):
        self.name = name
        self.every = int(options.pop("every", 0) or 0)
        self.options = options
        self.task, self.dataset = task, dataset
        self.enabled = True

    @classmethod
    def prerequisites(cls, options: dict) -> list[tuple[object, str]]:
        """(config, workdir) of runs that must be trained before this evaluator can work."""
        return []

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def __call__(self, state, context: EvalContext) -> dict[str, Any]:
        raise NotImplementedError

"""The seam between the trainer and the models.

A task is small and pure. The trainer owns the mesh, shardings, jit, data feeding,
optimizer construction (schedule, weight decay, clipping, accumulation), checkpoints and logs.

    class MyTask(Task):
        def build(self, rngs, make_optimizer) -> State        # modules + optimizers, one object
        def train_step(self, state, batch, rng) -> metrics    # mutates `state` in NNX style
        def eval_step(self, state, batch) -> sums             # sum-reducible statistics
        def summarize(self, sums) -> metrics                  # host side, from summed statistics
        def report(self, state, workdir) -> metrics           # optional: samples, plots, extra evals

`train_step` and `eval_step` are traced once inside `jax.jit` by the trainer: they must be
pure apart from mutating `state` (no Python side effects, no host syncs). `batch` is a dict
of arrays whose leading axis is sharded over the mesh's data axis; eval batches carry a
float `mask` (1 for real examples, 0 for the padding of the last batch) that eval sums must
weight by. `rng` is a fresh key per step, derived from the seed and the step number, so
resumed and uninterrupted runs see the same randomness.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from jaxnets.data import Dataset

Metrics = dict[str, jax.Array]


class Task:
    """Base class; subclasses override build/train_step/eval_step/summarize (and report)."""

    def __init__(self, config, dataset: Dataset):
        self.config = config
        self.dataset = dataset

    def build(self, rngs: nnx.Rngs, make_optimizer: Callable[..., nnx.Optimizer]) -> nnx.Module:
        raise NotImplementedError

    def train_step(self, state: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> Metrics:
        raise NotImplementedError

    def eval_step(self, state: nnx.Module, batch: dict[str, jax.Array]) -> Metrics:
        raise NotImplementedError

    def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, Any]:
        """Final metrics from the eval sums (already added over all batches and devices)."""
        return {k: float(v) for k, v in sums.items() if np.ndim(v) == 0}

    def throughput(self, state: nnx.Module) -> dict[str, float]:
        """Optional per-global-batch counts the trainer turns into rates: {"tokens": ...,
        "flops": model FLOPs of one train step}; logged as train/tokens_per_sec and, where
        the device's peak is known, train/mfu."""
        return {}

    def report(self, state: nnx.Module, workdir: str) -> dict[str, Any]:
        """Optional host-side work after training (samples, plots); returns extra metrics."""
        return {}


class State(nnx.Module):
    """A bag of modules and optimizers that make up one training state.

    `State(model=net, opt=nnx.Optimizer(net, tx, wrt=nnx.Param))`; a GAN holds two networks
    and two optimizers, a diffusion model its denoiser and an EMA copy.
    """

    def __init__(self, **parts):
        for name, part in parts.items():
            setattr(self, name, part)

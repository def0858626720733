"""The seam between the trainer and the models.

A task is small and pure. The trainer owns the mesh, shardings, jit, data feeding,
optimizer construction (schedule, weight decay, clipping, accumulation), checkpoints and logs.

    class MyTask(Task):
        def build(self, rngs, make_optimizer) -> State        # modules + optimizers, one object
        def train_step(self, state, batch, rng) -> metrics    # mutates `state` in NNX style
        def eval_step(self, state, batch) -> sums             # sum-reducible statistics
        def summarize(self, sums) -> metrics                  # host side, from summed statistics
        def report(self, state, workdir) -> metrics           # optional: samples, plots, extra evals

Options: `options` declares every task option with its default (the one place); the task
reads them as `self.opts[name]` (the config's `task_options` over the declared defaults; an
undeclared name is refused).

Inference entry points: the commands (`jaxnets sample|generate|translate|export`) call these
and nothing else; a task lists the ones it implements in `entry_points`:
        def sample(self, state, n, seed=0, **conditions) -> images [n, H, W, C] in [0, 1]
        def generate(self, state, prompt, length, temperature=None, seed=0) -> str (the continuation)
        def translate(self, state, text, beam=1) -> str
        def inference_fn(self, state) -> Inference    # "export": what `jax.export` serializes

`train_step` and `eval_step` are traced once inside `jax.jit` by the trainer: they must be
pure apart from mutating `state` (no Python side effects, no host syncs). `batch` is a dict
of arrays whose leading axis is sharded over the mesh's data axis; eval batches carry a
float `mask` (1 for real examples, 0 for the padding of the last batch) that eval sums must
weight by. `rng` is a fresh key per step, derived from the seed and the step number, so
resumed and uninterrupted runs see the same randomness.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from flax import nnx

from jaxnets.data import Dataset
from jaxnets.data.pipeline import read_records
from jaxnets.errors import UserError, unknown_names

Metrics = dict[str, jax.Array]
ENTRY_POINTS = ("sample", "generate", "translate", "export")


class Inference(NamedTuple):
    """A model's inference function for export: `fn(module, *inputs)`, with one example row of
    each input (name, array [1, ...]); `name` names the artifact."""
    name: str
    module: nnx.Module
    fn: Callable
    inputs: list[tuple[str, np.ndarray]]


def resolve_options(task_name: str, declared: dict[str, Any], given) -> dict[str, Any]:
    """`given` (config.task_options) over the `declared` defaults; an undeclared name is a UserError."""
    given = dict(given or {})
    unknown = [k for k in given if k not in declared]
    if unknown:
        raise unknown_names(f"Task {task_name!r}", "option", unknown, declared)
    return {**declared, **given}


class Task:
    """Base class; subclasses override build/train_step/eval_step/summarize (and report), and
    the inference entry points they list in `entry_points`."""

    options: dict[str, Any] = {}             # task_options: name -> default, declared once
    entry_points: frozenset[str] = frozenset()   # of ENTRY_POINTS: what the commands may ask

    def __init__(self, config, dataset: Dataset):
        self.config = config
        self.dataset = dataset
        self.opts = resolve_options(config.get("task", type(self).__name__), self.options,
                                    config.get("task_options"))

    # ------------------------------------------------------------------ what it can do
    def require(self, entry: str) -> None:
        """UserError unless this task implements `entry` (one of ENTRY_POINTS)."""
        if entry not in self.entry_points:
            can = ", ".join(sorted(self.entry_points)) or "none"
            raise UserError(f"Task {self.config.get('task', type(self).__name__)!r} has no {entry!r} "
                            f"entry point (it has: {can}); `jaxnets {entry}` needs one.")

    def sample(self, state, n: int, seed: int = 0, **conditions) -> np.ndarray:
        raise NotImplementedError

    def generate(self, state, prompt: str, length: int, temperature: float | None = None, seed: int = 0) -> str:
        raise NotImplementedError

    def translate(self, state, text: str, beam: int = 1) -> str:
        raise NotImplementedError

    def inference_fn(self, state) -> Inference:
        raise NotImplementedError

    @staticmethod
    def refuse_conditions(**conditions) -> None:
        """For unconditional samplers: any condition given (e.g. --label, --prompt) is an error."""
        given = [k for k, v in conditions.items() if v is not None]
        if given:
            raise UserError(f"This model samples unconditionally: drop {', '.join('--' + k for k in given)} "
                            "(conditions are for conditional DDPM workdirs).")

    def example_row(self, key: str) -> np.ndarray:
        """Row 0 of `key` in the eval split (else the train split): an export's example input."""
        split = self.dataset.splits.get(self.config.data.eval_split) or self.dataset.splits[self.config.data.train_split]
        # Through the source interface (lazy sources are not mappings), decoded as evaluation sees it.
        row = read_records(split, np.array([0]), self.dataset.eval_transform, None)
        if key not in row:
            raise UserError(f"Dataset {self.config.data.name!r} has no {key!r} to export the model's inputs from.")
        return np.asarray(row[key])

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

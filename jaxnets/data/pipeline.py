"""Input pipeline: deterministic, resumable, per-process batches from random-access splits.

Training order is a pure function of (seed, step): example j of global batch s is
`perm(epoch)[g % n]` with g = s * batch + j, epoch = g // n and perm(epoch) a permutation
seeded by (seed, epoch). Batches are always full (epochs run into each other), so shapes
never change and the train step compiles once; the iterator state saved in checkpoints is
just the next step. Each process gathers only its contiguous share of every global batch,
which is what `jax.make_array_from_process_local_data` expects on multi-host runs.
Gathering a whole batch with one fancy index is vectorised NumPy: no per-example Python.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator, Mapping

import numpy as np

from jaxnets.errors import UserError


class TrainIterator:
    def __init__(self, split: Mapping[str, np.ndarray], batch_size: int, seed: int, *,
                 process_index: int = 0, process_count: int = 1, start_step: int = 0):
        self.fields = dict(split)
        self.n = len(next(iter(self.fields.values())))
        if batch_size % process_count:
            raise UserError(f"Batch size {batch_size} is not divisible by the {process_count} processes.")
        if self.n == 0:
            raise UserError("The training split is empty.")
        self.batch_size = batch_size
        self.local = batch_size // process_count
        self.offset = process_index * self.local
        self.seed = seed
        self.step = start_step
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Dataset indices of this process's share of global batch `step`."""
        g = step * self.batch_size + self.offset + np.arange(self.local)
        epochs, within = np.divmod(g, self.n)
        out = np.empty(self.local, np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[within[sel]]
        return out

    def batch(self, step: int) -> dict[str, np.ndarray]:
        idx = self.indices(step)
        return {k: np.asarray(v[idx]) for k, v in self.fields.items()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        b = self.batch(self.step)
        self.step += 1
        return b

    def get_state(self) -> dict:
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size, "size": self.n}

    def set_state(self, state: dict) -> None:
        if (state["seed"], state["batch_size"], state["size"]) != (self.seed, self.batch_size, self.n):
            raise UserError(f"Checkpointed data iterator state {state} does not match this run's "
                            f"data (seed={self.seed}, batch_size={self.batch_size}, size={self.n}).")
        self.step = state["step"]


def eval_batches(split: Mapping[str, np.ndarray], batch_size: int, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One pass in order; the last batch is padded to full size and `mask` marks real examples."""
    fields = dict(split)
    n = len(next(iter(fields.values())))
    local = batch_size // process_count
    for start in range(0, n, batch_size):
        idx = np.arange(start + process_index * local, start + (process_index + 1) * local)
        mask = (idx < n).astype(np.float32)
        idx = np.minimum(idx, n - 1)
        batch = {k: np.asarray(v[idx]) for k, v in fields.items()}
        batch["mask"] = mask
        yield batch


def prefetch(iterator: Iterator, size: int) -> Iterator:
    """Run `iterator` on a daemon thread, `size` items ahead (0: no thread)."""
    if size <= 0:
        yield from iterator
        return
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def worker():
        try:
            for item in iterator:
                q.put(item)
        except BaseException as e:  # surfaced in the consumer
            q.put(e)
        q.put(done)

    threading.Thread(target=worker, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item

"""Input pipeline on Grain: deterministic, resumable, per-process batches from any source.

Training order is a pure function of (seed, step): example j of global batch s is
`perm(epoch)[g % n]` with g = s * batch + j, epoch = g // n and perm(epoch) a permutation
seeded by (seed, epoch). A host transform (decode, random-resized crop, flip) draws its
randomness from a generator seeded by (seed, g), so augmentation is a pure function of
(seed, step, j) too, whichever process or worker computes it. Batches are always full (epochs
run into each other), so shapes never change and the train step compiles once.

Each process reads and decodes only its contiguous share of every global batch, which is what
`jax.make_array_from_process_local_data` expects on multi-host runs. The batches are a Grain
`MapDataset` over step numbers (`MapDataset.range(start, stop).map(load)`), so the iterator
state saved in checkpoints is just the next step: resuming rebuilds the dataset from it, with
any number of processes or decoding workers. With `workers > 0`, Grain's `mp_prefetch` runs
`load` in that many worker processes (each takes every W-th step; Grain puts the batches back
in order), otherwise a reader thread prefetches in this process.
"""
from __future__ import annotations

import sys
from typing import Iterator

import grain
from absl import flags
import numpy as np

from jaxnets.data.source import Source, Transform, as_source, stack_records
from jaxnets.errors import UserError


class BatchOrder:
    """Which records make up each process's share of each global batch (picklable, cheap)."""

    def __init__(self, n: int, batch_size: int, seed: int, process_index: int, process_count: int):
        if batch_size % process_count:
            raise UserError(f"Batch size {batch_size} is not divisible by the {process_count} processes.")
        if n == 0:
            raise UserError("The training split is empty.")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.local = batch_size // process_count
        self.offset = process_index * self.local
        self._perms: dict[int, np.ndarray] = {}

    def __getstate__(self):
        return {**self.__dict__, "_perms": {}}   # workers rebuild permutations on demand

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.clear()
            # Shuffled in place: the permutation `Generator.permutation(n)` gives (it shuffles an
            # arange the same way), in int32 where it fits: half the memory of huge splits.
            perm = np.arange(self.n, dtype=np.int32 if self.n < 2**31 else np.int64)
            np.random.default_rng([self.seed, epoch]).shuffle(perm)
            self._perms[epoch] = perm
        return self._perms[epoch]

    def positions(self, step: int) -> np.ndarray:
        """Global positions g of this process's share of batch `step` in the training stream."""
        return step * self.batch_size + self.offset + np.arange(self.local, dtype=np.int64)

    def indices(self, step: int) -> np.ndarray:
        """Dataset indices of this process's share of global batch `step`."""
        epochs, within = np.divmod(self.positions(step), self.n)
        out = np.empty(self.local, np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[within[sel]]
        return out


def read_records(source: Source, indices: np.ndarray, transform: Transform | None,
                 rng_keys: np.ndarray | None) -> dict[str, np.ndarray]:
    """The records at `indices`, transformed (record i with a generator seeded by rng_keys[i])."""
    if transform is None:
        return source.get_batch(indices)
    return stack_records([
        transform(source[int(i)], None if rng_keys is None else np.random.default_rng(rng_keys[k]))
        for k, i in enumerate(indices)])


class _TrainLoad:
    """step -> this process's batch; runs in Grain's worker processes (pickled there)."""

    def __init__(self, source, order: BatchOrder, transform):
        self.source, self.order, self.transform = source, order, transform

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        step = int(step)
        keys = [[self.order.seed, int(g)] for g in self.order.positions(step)]
        return read_records(self.source, self.order.indices(step), self.transform, keys)


class TrainIterator:
    """Batches from `start_step` on; `get_state()`/`set_state()` carry the next step."""

    def __init__(self, split, batch_size: int, seed: int, *, process_index: int = 0,
                 process_count: int = 1, start_step: int = 0, transform: Transform | None = None,
                 workers: int = 0, prefetch: int = 2, stop_step: int | None = None):
        self.source = as_source(split)
        self.n = len(self.source)
        self.order = BatchOrder(self.n, batch_size, seed, process_index, process_count)
        self.batch_size, self.local, self.seed = batch_size, self.order.local, seed
        self.transform, self.workers, self.prefetch = transform, int(workers), int(prefetch)
        self.stop_step = stop_step
        self.step = start_step
        self.examples_read = 0          # records this process read (its share of every batch)
        self._load = _TrainLoad(self.source, self.order, transform)
        self._iter = None

    def indices(self, step: int) -> np.ndarray:
        return self.order.indices(step)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """Batch `step` read directly in this process (no workers, no prefetch)."""
        return self._load(step)

    def _stream(self):
        stop = self.stop_step if self.stop_step is not None else sys.maxsize // (2 * self.batch_size)
        ds = grain.MapDataset.range(self.step, max(stop, self.step + 1)).map(self._load)
        return stream(ds, self.workers, self.prefetch)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iter is None:
            self._iter = self._stream()
        b = next(self._iter)
        self.step += 1
        self.examples_read += self.local
        return b

    def close(self) -> None:
        """Stop the worker processes (their memory is then counted in RUSAGE_CHILDREN)."""
        if self._iter is not None:
            close = getattr(self._iter, "close", None)
            if close is not None:
                close()
            self._iter = None

    def get_state(self) -> dict:
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size, "size": self.n}

    def set_state(self, state: dict) -> None:
        if (state["seed"], state["batch_size"], state["size"]) != (self.seed, self.batch_size, self.n):
            raise UserError(f"Checkpointed data iterator state {state} does not match this run's "
                            f"data (seed={self.seed}, batch_size={self.batch_size}, size={self.n}).")
        self.close()
        self.step = state["step"]


def stream(ds: grain.MapDataset, workers: int, prefetch: int):
    """Iterate a MapDataset of batches in order: `workers` processes, else a reader thread."""
    if workers < 0:
        raise UserError(f"data.workers must be 0 (decode in this process) or a positive number "
                        f"of worker processes; got {workers}.")
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if prefetch > 0 else 0,
                                                 prefetch_buffer_size=max(prefetch, 0)))
    if workers > 0:
        # Grain reads absl flags (its own defaults) when it starts workers; jaxnets parses its
        # command line with argparse, so the flags are marked parsed with their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        # Batches come back in shared memory (Grain's default): a worker's batch reaches this
        # process as a block to map, not bytes to unpickle, which leaves this process's core
        # free for decoding (benchmarks/results/input_pipeline.json, workers rows).
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=max(prefetch, 1)))
    return iter(it_ds)


class _EvalLoad:
    """Eval batch number -> this process's share, padded past the end; `mask` marks real rows."""

    def __init__(self, source, batch_size: int, process_index: int, process_count: int, transform):
        self.source, self.transform = source, transform
        self.batch_size, self.local = batch_size, batch_size // process_count
        self.offset = process_index * self.local

    def __call__(self, b: int) -> dict[str, np.ndarray]:
        n = len(self.source)
        idx = int(b) * self.batch_size + self.offset + np.arange(self.local)
        mask = (idx < n).astype(np.float32)
        batch = read_records(self.source, np.minimum(idx, n - 1), self.transform, None)
        batch["mask"] = mask
        return batch


def eval_batches(split, batch_size: int, *, process_index: int = 0, process_count: int = 1,
                 transform: Transform | None = None, workers: int = 0,
                 prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """One pass in order over every example exactly once across processes; the last batch is
    padded to full size (repeating the last record) and `mask` marks the real examples."""
    source = as_source(split)
    batches = -(-len(source) // batch_size)
    ds = grain.MapDataset.range(batches).map(
        _EvalLoad(source, batch_size, process_index, process_count, transform))
    it = stream(ds, workers, prefetch)
    try:
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()

"""Datasets: a registry of loaders returning in-memory or random-access splits.

A loader returns a `Dataset`: named splits, each a dict of equally long arrays (or
random-access sources), plus `info` (num_classes, shapes, vocabulary, ...). The input
pipeline (`jaxnets.data.pipeline`) shuffles, batches and shards them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from jaxnets.registry import Registry


@dataclasses.dataclass
class Dataset:
    name: str
    splits: Mapping[str, Mapping[str, Any]]   # split -> field -> array-like with len()
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def size(self, split: str) -> int:
        first = next(iter(self.splits[split].values()))
        return len(first)


DATASETS = Registry("dataset", {
    "mnist5k": "jaxnets.data.offline:mnist5k",
    "digits": "jaxnets.data.offline:digits",
    "shakespeare": "jaxnets.data.offline:shakespeare",
    "tfds": "jaxnets.data.tfds_source:tfds_dataset",
    "cifar10": "jaxnets.data.tfds_source:cifar10",
    "mnist": "jaxnets.data.tfds_source:mnist",
    "addition": "jaxnets.data.synthetic:addition",
    "reversal": "jaxnets.data.synthetic:reversal",
    "copy_memory": "jaxnets.data.synthetic:copy_memory",
    "sequence_copy": "jaxnets.data.synthetic:sequence_copy",
    "truecase": "jaxnets.data.synthetic:truecase",
})


def load_dataset(name: str, /, **options) -> Dataset:
    return DATASETS.get(name)(**options)


def split_array(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train_idx, test_idx) split of range(n)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])

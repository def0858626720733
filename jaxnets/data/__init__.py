"""Datasets: a registry of loaders returning splits as random-access sources.

A loader returns a `Dataset`: named splits, each a `jaxnets.data.source.Source` (a dict of
equally long in-memory arrays becomes an `ArraySource`; image folders, token files, TFDS and
ArrayRecord files are opened, never loaded), plus `info` (num_classes, shapes, vocabulary,
...) and optional host transforms run per record by the pipeline's readers (decode + random
crop for training, resize + centre crop for evaluation). The input pipeline
(`jaxnets.data.pipeline`) shuffles, batches, shards and decodes them, in Grain workers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from jaxnets.data.source import Source, Transform, as_source
from jaxnets.registry import Registry


@dataclasses.dataclass
class Dataset:
    name: str
    splits: Mapping[str, Any]   # split -> Source (a mapping field -> array becomes an ArraySource)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_transform: Transform | None = None   # (record, generator) -> record, per training example
    eval_transform: Transform | None = None    # (record, None) -> record, per evaluated example

    def __post_init__(self):
        self.splits = {name: as_source(split) for name, split in self.splits.items()}

    def size(self, split: str) -> int:
        return len(self.splits[split])

    def source_kind(self, split: str) -> str:
        source: Source = self.splits[split]
        return source.kind


DATASETS = Registry("dataset", {
    "mnist5k": "jaxnets.data.offline:mnist5k",
    "digits": "jaxnets.data.offline:digits",
    "shakespeare": "jaxnets.data.offline:shakespeare",
    "image_folder": "jaxnets.data.image_folder:image_folder",
    "token_file": "jaxnets.data.token_file:token_file",
    "array_record": "jaxnets.data.array_record_files:array_record",
    "tfds": "jaxnets.data.tfds_source:tfds_dataset",
    "cifar10": "jaxnets.data.tfds_source:cifar10",
    "mnist": "jaxnets.data.tfds_source:mnist",
    "imagenet2012": "jaxnets.data.tfds_source:imagenet2012",
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

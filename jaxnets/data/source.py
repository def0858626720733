"""Random-access sources: the one interface every dataset split is read through.

A source is opened, never loaded: `len(source)` examples, `source[i]` one record (a dict of
NumPy arrays, possibly of varying shapes, e.g. decoded JPEGs before cropping) and
`source.get_batch(indices)` the records of a batch stacked field by field. It is also what
Grain calls a `RandomAccessDataSource` (len + getitem), so Grain's worker processes can read
it; sources are pickled into those workers, so they hold paths and open files lazily.

`ArraySource` makes the in-memory datasets (MNIST-5k, digits, Shakespeare, the synthetic
tasks) sources too; it is also a read-only mapping field -> array, so code that inspects a
split's arrays (held-out images, shapes) keeps working. `SubsetSource` is a fixed selection
of another source's records (held-out validation splits).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterator, Sequence

import numpy as np

Record = dict[str, np.ndarray]
# A host transform: (record, per-example NumPy generator or None for eval) -> fixed-shape record.
Transform = Callable[[Record, "np.random.Generator | None"], Record]


def stack_records(records: Sequence[Record]) -> Record:
    """Field-wise stack; every record must have the same fields and, per field, one shape."""
    first = records[0]
    return {k: np.stack([np.asarray(r[k]) for r in records]) for k in first}


class Source:
    """Base class: subclasses define `__len__` and `__getitem__`; `get_batch` stacks records."""

    kind = "source"   # reported in final.json's "data.source"

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Record:
        raise NotImplementedError

    def get_batch(self, indices: Sequence[int]) -> Record:
        return stack_records([self[int(i)] for i in indices])


class ArraySource(Source, Mapping):
    """Equally long arrays held in memory (or memory-mapped): field -> array [N, ...]."""

    kind = "in_memory"

    def __init__(self, fields: Mapping[str, Any]):
        self.fields = dict(fields)
        lengths = {k: len(v) for k, v in self.fields.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"fields of unequal length: {lengths}")

    # Mapping: field name -> array
    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.fields[key]
        return {k: np.asarray(v[int(key)]) for k, v in self.fields.items()}

    def get_batch(self, indices: Sequence[int]) -> Record:
        idx = np.asarray(indices)
        return {k: np.asarray(v[idx]) for k, v in self.fields.items()}   # one fancy index, vectorised


class SubsetSource(Source):
    """Records `indices` of `base`, in that order."""

    def __init__(self, base: Source, indices: np.ndarray):
        self.base, self.indices = base, np.asarray(indices, np.int64)
        self.kind = base.kind

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Record:
        return self.base[int(self.indices[index])]

    def get_batch(self, indices: Sequence[int]) -> Record:
        return self.base.get_batch(self.indices[np.asarray(indices, np.int64)])


def as_source(split) -> Source:
    """A split as a source: sources pass through, a mapping of arrays becomes an ArraySource."""
    return split if isinstance(split, Source) else ArraySource(split)

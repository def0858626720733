"""ArrayRecord files given directly: each record one example, a msgpack map field -> array.

    jaxnets train --config ... --config.data.name=array_record \
        --config.data.options.files='{"train": "/data/train-*.array_record", "test": "/data/test-*.array_record"}'

Records are read one by one through Grain's `ArrayRecordDataSource` (random access, picklable
into worker processes). Each record is `flax.serialization.msgpack_serialize` of a dict of NumPy
arrays, e.g. {"image": uint8 [H,W,C], "label": int32} or {"tokens": int32 [T]};
`write_array_record` writes such files. With `image_size` > 0 the "image" field holds encoded
JPEG/PNG bytes (uint8 [nbytes]) decoded and cropped by the host transforms of
`jaxnets.data.image_decode`, as for image folders. `info` needs `num_classes` (classification)
or `vocab_size` (language models): pass them as options.
"""
from __future__ import annotations

import glob
import os
from typing import Iterable, Mapping

import numpy as np
from flax import serialization

from jaxnets.data import Dataset
from jaxnets.data.image_decode import EvalImageTransform, TrainImageTransform
from jaxnets.data.source import Source, stack_records
from jaxnets.errors import UserError


def write_array_record(path: str, records: Iterable[Mapping[str, np.ndarray]]) -> int:
    """Write `records` (dicts of arrays) to one ArrayRecord file; returns the count."""
    from array_record.python.array_record_module import ArrayRecordWriter
    writer = ArrayRecordWriter(os.fspath(path), "group_size:1")   # 1: cheapest random access
    count = 0
    for record in records:
        writer.write(serialization.msgpack_serialize({k: np.asarray(v) for k, v in record.items()}))
        count += 1
    writer.close()
    return count


class ArrayRecordSource(Source):
    kind = "array_record"

    def __init__(self, paths: list[str], encoded_image: bool = False):
        import grain   # the reader; grain is a dependency of the pipeline anyway
        self.paths, self.encoded_image = list(paths), encoded_image
        self.reader = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self.reader)

    def _decode(self, raw: bytes, index: int) -> dict:
        try:
            record = serialization.msgpack_restore(raw)
        except Exception as e:  # noqa: BLE001 - any parse failure is the file's fault
            raise UserError(f"Record {index} of the ArrayRecord files {self.paths[:3]} is not a "
                            f"msgpack map of arrays ({type(e).__name__}: {e}).") from None
        if self.encoded_image:
            record["path"] = np.str_(f"record {index} of {', '.join(self.paths[:3])}")
        return record

    def __getitem__(self, index: int) -> dict:
        return self._decode(self.reader[int(index)], int(index))

    def get_batch(self, indices) -> dict:
        indices = [int(i) for i in indices]
        return stack_records([self._decode(r, i) for r, i in
                              zip(self.reader.__getitems__(indices), indices)])


def array_record(files: Mapping[str, str] | None = None, image_size: int = 0,
                 num_classes: int = 0, vocab_size: int = 0) -> Dataset:
    """Splits from ArrayRecord files: `files` maps split -> path or glob pattern."""
    if not files:
        raise UserError("The array_record dataset needs its files: --config.data.options.files="
                        "'{\"train\": \"/data/train-*.array_record\", \"test\": \"...\"}'.")
    splits = {}
    for split, pattern in dict(files).items():
        paths = sorted(glob.glob(os.path.expanduser(pattern)))
        if not paths:
            raise UserError(f"No ArrayRecord files match {pattern!r} (split {split!r}).")
        splits[split] = ArrayRecordSource(paths, encoded_image=image_size > 0)
    first = next(iter(splits.values()))[0]
    info = {"description": f"ArrayRecord files {dict(files)}."}
    if num_classes:
        info["num_classes"] = int(num_classes)
    if vocab_size:
        info["vocab_size"] = int(vocab_size)
    if image_size > 0:
        info["image_shape"] = (image_size, image_size, 3)
        return Dataset("array_record", splits, info, TrainImageTransform(image_size),
                       EvalImageTransform(image_size))
    if "image" in first:
        info["image_shape"] = tuple(np.shape(first["image"]))
    if "tokens" in first:
        info["seq_len"] = int(np.shape(first["tokens"])[0]) - 1
    return Dataset("array_record", splits, info)

"""TFDS datasets read lazily, record by record, with `tfds.data_source` (ArrayRecord files,
no TensorFlow): a split is a `TfdsSource` that opens the data source in whichever process
reads it (the trainer or a Grain worker) and returns one decoded record per index.
`image_size` > 0 keeps the images encoded (TFDS's SkipDecoding) and decodes them with the
host transforms of `jaxnets.data.image_decode` instead (random-resized crop for training,
resize + centre crop for evaluation): the path for ImageNet (`imagenet2012`).

Reading needs a data_dir prepared beforehand. A `tfds.data_source` call that finds nothing
tries the network and, on a machine without it, hangs for minutes before failing; so we look
for the prepared files first and, when they are absent and no download was asked for, raise
a `UserError` at once that says what was looked for, where, and how to prepare it.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Sequence

import numpy as np

from jaxnets.data import Dataset
from jaxnets.data.image_decode import EvalImageTransform, TrainImageTransform
from jaxnets.data.source import Source, SubsetSource, stack_records
from jaxnets.errors import UserError

def default_data_dir() -> str:
    """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"),
                                                           "tensorflow_datasets")


def _parse_name(name: str) -> tuple[str, str | None]:
    """'cifar10', 'cifar10:3.0.2', 'imagenet2012/subset:5.0.0' -> (path inside data_dir, version)."""
    base, _, version = name.partition(":")
    return base, (version or None)


def find_prepared_version(name: str, data_dir: str) -> str | None:
    """The version folder of `name` holding a dataset_info.json under `data_dir` (newest if
    several and none was pinned with 'name:version'), or None. Only looks at the file system."""
    base, version = _parse_name(name)
    root = pathlib.Path(data_dir, *base.split("/"))
    if version is not None:
        return version if (root / version / "dataset_info.json").is_file() else None
    found = [p.parent.name for p in root.glob("*/dataset_info.json")]
    if not found:
        return None
    return max(found, key=lambda v: tuple(int(x) if x.isdigit() else -1 for x in v.split(".")))


def _not_prepared_message(name: str, data_dir: str, download_asked: bool) -> str:
    base, version = _parse_name(name)
    looked_for = os.path.join(data_dir, base, version or "<version>", "dataset_info.json")
    prepare = (f"python -c \"import tensorflow_datasets as tfds; "
               f"tfds.data_source('{name}', data_dir='{data_dir}', download=True)\"")
    if download_asked:
        return (f"TFDS dataset {name!r} is not prepared in {data_dir} (no {looked_for}) and "
                "preparing it needs TensorFlow, which is not installed here (TFDS encodes the "
                "images with it; reading does not). Run `pip install tensorflow` and retry, or "
                f"prepare it on another machine with `{prepare}` and copy {os.path.join(data_dir, base)} "
                "here.")
    return (f"TFDS dataset {name!r} is not prepared: looked for {looked_for} under the data_dir "
            f"{data_dir} (set with data_dir=..., or $TFDS_DATA_DIR, default ~/tensorflow_datasets) "
            "and found nothing; jaxnets does not download unless asked, because TFDS would "
            "otherwise hang for minutes on a machine without network. Prepare it once on a "
            f"machine with network and TensorFlow installed: `{prepare}` (then copy "
            f"{os.path.join(data_dir, base)} here if needed), or let this run download it by "
            "passing --config.data.options.download=True; the offline datasets mnist5k, digits "
            "and shakespeare need no preparation.")


class TfdsSource(Source):
    """One split of a prepared TFDS dataset; records {"image", "label"} (+ "path" when encoded)."""

    kind = "tfds"

    def __init__(self, name: str, split: str, data_dir: str, image_key: str, label_key: str,
                 encoded: bool = False):
        self.name, self.split, self.data_dir = name, split, data_dir
        self.image_key, self.label_key, self.encoded = image_key, label_key, encoded
        self._source = None
        self.length = len(self.source)

    def __getstate__(self):
        return {**self.__dict__, "_source": None}   # reopened lazily in each worker

    @property
    def source(self):
        if self._source is None:
            import tensorflow_datasets as tfds   # delayed: a heavy import, only for TFDS data
            decoders = {self.image_key: tfds.decode.SkipDecoding()} if self.encoded else None
            self._source = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                                            download=False, decoders=decoders)
        return self._source

    def __len__(self) -> int:
        return self.length

    def _record(self, raw, index: int) -> dict:
        label = np.int32(raw[self.label_key])
        image = raw[self.image_key]
        if self.encoded:
            return {"image": np.frombuffer(image, np.uint8), "label": label,
                    "path": np.str_(f"{self.name}/{self.split}[{index}] in {self.data_dir}")}
        image = np.asarray(image, np.uint8)
        return {"image": image[..., None] if image.ndim == 2 else image, "label": label}

    def __getitem__(self, index: int) -> dict:
        return self._record(self.source[int(index)], int(index))

    def get_batch(self, indices) -> dict:
        indices = [int(i) for i in indices]
        return stack_records([self._record(r, i) for r, i in
                              zip(self.source.__getitems__(indices), indices)])


def tfds_dataset(name: str, data_dir: str | None = None, download: bool = False,
                 splits: Sequence[str] = ("train", "test"), image_key: str = "image",
                 label_key: str = "label", image_size: int = 0) -> Dataset:
    """Image-classification splits of a TFDS dataset, read lazily.

    Fields: `image` uint8 [H,W,C] per record, `label` int32. `name` may pin a version
    ('cifar10:3.0.2'); otherwise the newest prepared version in `data_dir` is read, so TFDS
    never tries to fetch a newer one. `image_size` > 0: images of any size, decoded and
    cropped to image_size x image_size by the host transforms.
    """
    data_dir = os.fspath(data_dir) if data_dir else default_data_dir()
    remote = "://" in data_dir   # gs://...: cannot be checked cheaply here; trust the user
    version = None if remote else find_prepared_version(name, data_dir)
    if version is None and not remote:
        if not download:
            raise UserError(_not_prepared_message(name, data_dir, download_asked=False))
        if importlib.util.find_spec("tensorflow") is None:
            raise UserError(_not_prepared_message(name, data_dir, download_asked=True))
    resolved = name if version is None or ":" in name else f"{name}:{version}"

    import tensorflow_datasets as tfds   # imported only once we know it will not hang

    if download and version is None:   # prepare once (needs TensorFlow), then read lazily
        tfds.data_source(resolved, split=list(splits), data_dir=data_dir, download=True)
    encoded = image_size > 0
    sources = {split: TfdsSource(resolved, split, data_dir, image_key, label_key, encoded)
               for split in splits}
    ds_info = tfds.builder(resolved, data_dir=data_dir).info
    label_feature = ds_info.features[label_key]
    if encoded:
        image_shape = (image_size, image_size, 3)
    else:
        first = next(iter(sources.values()))[0]["image"]
        image_shape = tuple(first.shape)
    info = {
        "num_classes": int(label_feature.num_classes),
        "label_names": list(getattr(label_feature, "names", []) or []),
        "image_shape": image_shape,
        "description": f"TFDS {ds_info.name}:{ds_info.version} from {data_dir}. "
                       + (ds_info.description or "").strip().split("\n")[0],
    }
    if not encoded:
        return Dataset(name, sources, info)
    return Dataset(name, sources, info, train_transform=TrainImageTransform(image_size),
                   eval_transform=EvalImageTransform(image_size))


def _with_validation(ds: Dataset, validation: int, seed: int) -> Dataset:
    """Move `validation` examples, drawn by a seeded permutation, from train to a new split."""
    if validation <= 0:
        return ds
    train = ds.splits["train"]
    n = len(train)
    if validation >= n:
        raise UserError(f"validation={validation} must be smaller than the {n} training examples "
                        f"of {ds.name!r}.")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:validation]), np.sort(perm[validation:])
    splits = dict(ds.splits)
    splits["train"] = SubsetSource(train, train_idx)
    splits["validation"] = SubsetSource(train, val_idx)
    return Dataset(ds.name, splits, ds.info, ds.train_transform, ds.eval_transform)


def cifar10(data_dir: str | None = None, download: bool = False, validation: int = 5000,
            seed: int = 0) -> Dataset:
    """CIFAR-10: train (45k), validation (5k held out of train by seed), test (10k)."""
    return _with_validation(tfds_dataset("cifar10", data_dir, download), validation, seed)


def imagenet2012(data_dir: str | None = None, image_size: int = 224) -> Dataset:
    """ILSVRC-2012 from a prepared TFDS data_dir (TFDS needs the manually downloaded archives to
    prepare it): train (1,281,167) and validation (50,000), host-decoded crops of image_size."""
    return tfds_dataset("imagenet2012", data_dir or None, splits=("train", "validation"),
                        image_size=image_size)


def mnist(data_dir: str | None = None, download: bool = False, validation: int = 5000,
          seed: int = 0) -> Dataset:
    """Full MNIST: train (55k), validation (5k held out of train by seed), test (10k)."""
    return _with_validation(tfds_dataset("mnist", data_dir, download), validation, seed)

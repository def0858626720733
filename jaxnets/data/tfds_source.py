"""TFDS datasets read with `tfds.data_source` (array_record files, no TensorFlow) into memory.

Reading needs a data_dir prepared beforehand. A `tfds.data_source` call that finds nothing
tries the network and, on a machine without it, hangs for minutes before failing; so we look
for the prepared files first and, when they are absent and no download was asked for, raise
a `UserError` at once that says what was looked for, where, and how to prepare it.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from typing import Sequence

import numpy as np

from jaxnets.data import Dataset
from jaxnets.errors import UserError

_READ_CHUNK = 1024   # records per random-access read: amortizes per-call overhead


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


def _read_split(source, split: str, name: str, image_key: str, label_key: str) -> dict:
    from tqdm.auto import tqdm   # an optional dependency (comes with tensorflow-datasets): TFDS reads only

    n = len(source)
    images, labels = [], []
    # disable=None: a bar on a terminal, silence when stderr is a log file.
    with tqdm(total=n, desc=f"Reading {name}/{split}", unit="ex", disable=None,
              file=sys.stderr) as bar:
        for start in range(0, n, _READ_CHUNK):
            records = source.__getitems__(list(range(start, min(start + _READ_CHUNK, n))))
            images.extend(r[image_key] for r in records)
            labels.extend(r[label_key] for r in records)
            bar.update(len(records))
    image = np.stack(images).astype(np.uint8, copy=False)
    if image.ndim == 3:   # grayscale stored as HxW: make it NHWC
        image = image[..., None]
    return {"image": image, "label": np.asarray(labels, dtype=np.int32)}


def tfds_dataset(name: str, data_dir: str | None = None, download: bool = False,
                 splits: Sequence[str] = ("train", "test"), image_key: str = "image",
                 label_key: str = "label") -> Dataset:
    """Load image-classification splits of a TFDS dataset into memory.

    Fields: `image` uint8 [N,H,W,C], `label` int32. `name` may pin a version
    ('cifar10:3.0.2'); otherwise the newest prepared version in `data_dir` is read, so TFDS
    never tries to fetch a newer one.
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

    sources = tfds.data_source(resolved, split=list(splits), data_dir=data_dir,
                               download=download and version is None)
    sources = dict(zip(splits, sources))
    data = {split: _read_split(src, split, name, image_key, label_key)
            for split, src in sources.items()}
    ds_info = next(iter(sources.values())).dataset_info
    label_feature = ds_info.features[label_key]
    info = {
        "num_classes": int(label_feature.num_classes),
        "label_names": list(getattr(label_feature, "names", []) or []),
        "image_shape": tuple(next(iter(data.values()))["image"].shape[1:]),
        "description": f"TFDS {ds_info.name}:{ds_info.version} from {data_dir}. "
                       + (ds_info.description or "").strip().split("\n")[0],
    }
    return Dataset(name, data, info)


def _with_validation(ds: Dataset, validation: int, seed: int) -> Dataset:
    """Move `validation` examples, drawn by a seeded permutation, from train to a new split."""
    if validation <= 0:
        return ds
    train = ds.splits["train"]
    n = len(train["label"])
    if validation >= n:
        raise UserError(f"validation={validation} must be smaller than the {n} training examples "
                        f"of {ds.name!r}.")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:validation]), np.sort(perm[validation:])
    splits = dict(ds.splits)
    splits["train"] = {k: v[train_idx] for k, v in train.items()}
    splits["validation"] = {k: v[val_idx] for k, v in train.items()}
    return Dataset(ds.name, splits, ds.info)


def cifar10(data_dir: str | None = None, download: bool = False, validation: int = 5000,
            seed: int = 0) -> Dataset:
    """CIFAR-10: train (45k), validation (5k held out of train by seed), test (10k)."""
    return _with_validation(tfds_dataset("cifar10", data_dir, download), validation, seed)


def mnist(data_dir: str | None = None, download: bool = False, validation: int = 5000,
          seed: int = 0) -> Dataset:
    """Full MNIST: train (55k), validation (5k held out of train by seed), test (10k)."""
    return _with_validation(tfds_dataset("mnist", data_dir, download), validation, seed)

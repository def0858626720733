"""Image folders in ImageNet's layout: ROOT/SPLIT/CLASS/*.jpg|*.jpeg|*.png, read lazily.

    jaxnets train --config experiments/resnet50_imagenet.py --config.data.options.root=/data/imagenet

Labels are the class folder names of the train split, sorted (ImageNet's synset ids: the
standard label order); every other split must use the same names. Files with other
extensions (README, .txt, hidden files) are ignored. The file list is built once per split
and cached as JSON beside the data (ROOT/.jaxnets-files-SPLIT.json) or, when ROOT is read-only,
under $JAXNETS_CACHE/data/; it is rebuilt whenever the split folder or a class folder changed
(their modification times are part of the cache), e.g. after adding or removing a file.
A record is the file's undecoded bytes, its label and its path; decoding and cropping happen
in the pipeline's readers (`jaxnets.data.image_decode`), in worker processes with data.workers.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Sequence

import numpy as np

from jaxnets.cache import cache_root
from jaxnets.data import Dataset
from jaxnets.data.image_decode import EvalImageTransform, TrainImageTransform
from jaxnets.data.source import Source
from jaxnets.errors import UserError

EXTENSIONS = (".jpg", ".jpeg", ".png")
_CACHE_VERSION = 1


def _class_dirs(split_dir: pathlib.Path) -> list[os.DirEntry]:
    return sorted((e for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")),
                  key=lambda e: e.name)


def _stamp(split_dir: pathlib.Path, classes: list[os.DirEntry]) -> dict:
    return {"version": _CACHE_VERSION, "split_mtime_ns": split_dir.stat().st_mtime_ns,
            "class_mtimes_ns": {c.name: c.stat().st_mtime_ns for c in classes}}


def _cache_paths(root: pathlib.Path, split: str) -> list[pathlib.Path]:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [root / f".jaxnets-files-{split}.json",
            cache_root() / "data" / "image_folders" / f"{key}-{split}.json"]


def list_files(root: pathlib.Path, split: str) -> tuple[list[str], list[str], list[int]]:
    """(class names, file paths relative to ROOT/SPLIT, class index per file), from the cache
    when it is current."""
    split_dir = root / split
    if not split_dir.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise UserError(f"Image folder split {split_dir} does not exist (expected the layout "
                        f"ROOT/{split}/CLASS/*.jpg; {root} has "
                        f"{'folders ' + ', '.join(present) if present else 'no folders'}). "
                        "Point data.options.root at the folder that holds the split folders.")
    classes = _class_dirs(split_dir)
    if not classes:
        raise UserError(f"Image folder split {split_dir} has no class folders: expected "
                        f"{split_dir}/CLASS/*.jpg|*.png, one folder per class.")
    stamp = _stamp(split_dir, classes)
    for path in _cache_paths(root, split):
        try:
            cached = json.loads(path.read_text())
            if cached["stamp"] == stamp:
                return cached["classes"], cached["files"], cached["labels"]
        except (OSError, ValueError, KeyError):
            continue
    names, files, labels = [c.name for c in classes], [], []
    for label, c in enumerate(classes):
        found = sorted(e.name for e in os.scandir(c.path)
                       if e.name.lower().endswith(EXTENSIONS) and not e.name.startswith("."))
        files += [f"{c.name}/{f}" for f in found]
        labels += [label] * len(found)
    empty = [c.name for c in classes if not any(f.startswith(c.name + "/") for f in files)]
    if not files:
        raise UserError(f"Image folder split {split_dir} has class folders but no image files "
                        f"({', '.join(EXTENSIONS)}) in them.")
    if empty:
        raise UserError(f"Class folder(s) without image files under {split_dir}: "
                        f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}. Every class "
                        "needs at least one .jpg/.jpeg/.png file.")
    payload = json.dumps({"stamp": stamp, "classes": names, "files": files, "labels": labels})
    for path in _cache_paths(root, split):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(payload)
            os.replace(tmp, path)   # whole or absent, for parallel runs
            break
        except OSError:
            continue
    return names, files, labels


class ImageFolderSource(Source):
    """One split of an image folder: record i = {"image": file bytes (uint8 [nbytes]),
    "label": int32, "path": str}. Holds only the file list (compact NumPy byte strings)."""

    kind = "image_folder"

    def __init__(self, root: str | os.PathLike, split: str, class_names: Sequence[str] | None = None):
        self.root = pathlib.Path(root)
        names, files, labels = list_files(self.root, split)
        self.split_dir = self.root / split
        labels = np.asarray(labels, np.int32)
        if class_names is not None and list(names) != list(class_names):
            unknown = sorted(set(names) - set(class_names))
            if unknown:
                raise UserError(f"Class folder(s) {', '.join(unknown[:10])} of {self.split_dir} "
                                f"are not classes of the training split ({len(class_names)} classes).")
            remap = np.asarray([list(class_names).index(n) for n in names], np.int32)
            labels = remap[labels]
        self.class_names = list(class_names if class_names is not None else names)
        self.files = np.asarray([f.encode() for f in files])   # bytes_ array: cheap to pickle
        self.labels = labels

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        return os.path.join(self.split_dir, self.files[index].decode())

    def __getitem__(self, index: int):
        path = self.path(int(index))
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UserError(f"Cannot read image file {path} ({e.strerror or e}).") from None
        return {"image": np.frombuffer(data, np.uint8), "label": self.labels[index],
                "path": np.str_(path)}


def image_folder(root: str = "", image_size: int = 224, splits: Sequence[str] = ("train", "val"),
                 min_scale: float = 0.08, crop_fraction: float = 0.875, flip: bool = True) -> Dataset:
    """ImageNet-layout folder ROOT/SPLIT/CLASS/*.jpg|png. `image` uint8 [size,size,3] after the
    host transforms (train: random-resized crop + flip; others: resize + centre crop)."""
    if not root:
        raise UserError("The image_folder dataset needs its root: --config.data.options.root=DIR "
                        "(DIR/train/CLASS/*.jpg, DIR/val/CLASS/*.jpg).")
    if not pathlib.Path(root).is_dir():
        raise UserError(f"Image folder root {root} does not exist or is not a directory.")
    if isinstance(splits, str):
        splits = (splits,)
    first = ImageFolderSource(root, splits[0])
    sources = {splits[0]: first}
    for split in splits[1:]:
        sources[split] = ImageFolderSource(root, split, first.class_names)
    info = {"num_classes": len(first.class_names), "label_names": first.class_names,
            "image_shape": (image_size, image_size, 3),
            "description": f"Image folder {root} ({', '.join(f'{s}: {len(v):,}' for s, v in sources.items())} "
                           f"images, {len(first.class_names)} classes), {image_size} px crops."}
    return Dataset("image_folder", sources, info,
                   train_transform=TrainImageTransform(image_size, min_scale, flip),
                   eval_transform=EvalImageTransform(image_size, crop_fraction))

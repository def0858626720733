"""Where a run's files live: a local directory or an object store (gs://, s3://), one path type.

Every file a run or a command writes or reads outside orbax (metrics.jsonl, final.json, the
lock, best/best.json, eval outputs) goes through these helpers; orbax and TensorStore take the
same paths natively. Paths are `etils.epath.Path`s: local ones are made absolute, gs:// and
s3:// ones go through fsspec (gcsfs, s3fs). Writes are atomic where the store allows it: a local
file is written to a temporary name in the same folder and renamed over the target (readers see
the old or the new file, never half of one); an object store replaces an object atomically on
upload.
"""
from __future__ import annotations

import os
import tempfile

from etils import epath

REMOTE = ("gs://", "s3://")


def is_remote(path) -> bool:
    return str(path).startswith(REMOTE)


def resolve(path) -> epath.Path:
    """An absolute local path, or the object-store URL as it is."""
    text = os.fspath(path) if not isinstance(path, str) else path
    return epath.Path(text if is_remote(text) else os.path.abspath(text))


def join(path, *parts) -> str:
    return str(resolve(path).joinpath(*parts))


def exists(path) -> bool:
    return resolve(path).exists()


def isdir(path) -> bool:
    return resolve(path).is_dir()


def makedirs(path) -> None:
    resolve(path).mkdir(parents=True, exist_ok=True)


def listdir(path) -> list[str]:
    p = resolve(path)
    return sorted(child.name for child in p.iterdir()) if p.is_dir() else []


def read_text(path) -> str:
    return resolve(path).read_text()


def read_bytes(path) -> bytes:
    return resolve(path).read_bytes()


def remove(path) -> None:
    resolve(path).unlink()


def write_bytes(path, data: bytes) -> None:
    """Atomic: a temporary file beside the target renamed over it (one upload on object stores)."""
    p = resolve(path)
    if is_remote(p):
        p.write_bytes(data)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, str(p))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode())

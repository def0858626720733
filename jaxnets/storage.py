"""Where a run's files live: a local directory or an object store (gs://, s3://), one path type.

Every file a run or a command writes or reads outside orbax (metrics.jsonl, TensorBoard events,
final.json, the lock, best/best.json, reports, eval outputs) goes through these helpers; orbax
and TensorStore take the same paths natively. Paths are `etils.epath.Path`s: local ones are made
absolute, gs:// and s3:// ones go through fsspec (gcsfs, s3fs). Writes are atomic where the
store allows it: a local file is written to a temporary name in the same folder and renamed over
the target (readers see the old or the new file, never half of one); an object store replaces
an object atomically on upload.

A local GCS emulator is honoured through the standard `STORAGE_EMULATOR_HOST`
(e.g. http://localhost:9023), as Google's client libraries do: gcsfs reads it itself, and
`honour_emulator` points TensorStore's gcs driver (orbax's checkpoints) at the same endpoint
(`TENSORSTORE_GCS_HTTP_URL`) with a placeholder token (`GOOGLE_AUTH_TOKEN_FOR_TESTING`) when no
credentials are configured, since an emulator checks none.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import fsspec
from etils import epath

REMOTE = ("gs://", "s3://")


def is_remote(path) -> bool:
    return str(path).startswith(REMOTE)


def honour_emulator() -> None:
    """STORAGE_EMULATOR_HOST -> TensorStore's gcs endpoint and test token (see the module doc)."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        return
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host if "://" in host else f"http://{host}")
    if not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
        fsspec.config.conf.setdefault("gcs", {}).setdefault("token", "anon")   # gcsfs: no lookup
    # gcsfs's zonal/hierarchical-bucket probe speaks gRPC over TLS, which an emulator does not
    # answer (each probe then waits 60 s); read before gcsfs is first imported.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _object_store(path, fresh: bool = False):
    """(fsspec filesystem, path inside it) of an object-store URL; `fresh` drops fsspec's cached
    listings first (other processes write there too)."""
    honour_emulator()
    fs, where = fsspec.core.url_to_fs(str(path))
    if fresh:
        fs.invalidate_cache()
    return fs, where


def resolve(path) -> epath.Path:
    """An absolute local path, or the object-store URL as it is."""
    text = os.fspath(path) if not isinstance(path, str) else path
    if is_remote(text):
        honour_emulator()
        return epath.Path(text)
    return epath.Path(os.path.abspath(text))


def display(path) -> str:
    """The path as users wrote it for object stores, absolute for local ones."""
    return str(resolve(path))


def join(path, *parts) -> str:
    return str(resolve(path).joinpath(*parts))


def exists(path) -> bool:
    if is_remote(path):
        fs, where = _object_store(path, fresh=True)
        return fs.exists(where)
    return resolve(path).exists()


def isdir(path) -> bool:
    return resolve(path).is_dir()


def makedirs(path) -> None:
    resolve(path).mkdir(parents=True, exist_ok=True)


def listdir(path) -> list[str]:
    p = resolve(path)
    if is_remote(p):
        fs, where = _object_store(p, fresh=True)
        try:
            return sorted({os.path.basename(x.rstrip("/")) for x in fs.ls(where, detail=False)})
        except FileNotFoundError:
            return []
    return sorted(child.name for child in p.iterdir()) if p.is_dir() else []


def read_text(path) -> str:
    return resolve(path).read_text()


def read_bytes(path) -> bytes:
    return resolve(path).read_bytes()


def remove(path) -> None:
    resolve(path).unlink()


def remove_tree(path) -> None:
    """A folder and everything under it (on object stores: every object under the prefix)."""
    if not is_remote(path):
        shutil.rmtree(str(resolve(path)), ignore_errors=True)
        return
    fs, where = _object_store(path)
    try:
        fs.rm(where, recursive=True)
    except FileNotFoundError:   # gcsfs: the objects are gone, the folder was only a prefix
        pass
    fs.invalidate_cache()


def file_sizes(directory) -> dict[str, int]:
    """Every file under `directory` (relative path -> bytes)."""
    if not is_remote(directory):
        root = str(resolve(directory))
        return {os.path.relpath(os.path.join(r, f), root): os.path.getsize(os.path.join(r, f))
                for r, _, names in os.walk(root) for f in names}
    fs, root = _object_store(directory)
    found = fs.find(root, detail=True)
    return {os.path.relpath(name, root): int(info.get("size") or 0) for name, info in found.items()}


def size(path) -> int:
    if not is_remote(path):
        return os.path.getsize(str(resolve(path)))
    fs, where = _object_store(path)
    return int(fs.size(where))


def rename_dir(source, target) -> None:
    """Move a folder (on object stores: every object under it) to a new name."""
    if not is_remote(source):
        os.rename(str(resolve(source)), str(resolve(target)))
        return
    fs, src = _object_store(source)
    fs.mv(src, _object_store(target)[1], recursive=True)


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

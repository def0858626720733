"""Orbax checkpoints of the whole training state plus JSON metadata (step, data iterator, ...).

The state is saved as a pure dict of arrays; typed PRNG keys (an `nnx.Rngs` held by a
module) are stored as raw key data. A structural signature of the state is saved beside it
so that a workdir holding another model's checkpoint is refused with a clear message
instead of a shape error deep inside orbax.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxnets import storage
from jaxnets.errors import UserError
from jaxnets.train.metric_log import strict_json


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(pure: dict) -> dict:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, pure)


def from_saveable(saved: dict, like: dict) -> dict:
    return jax.tree.map(lambda s, l: jax.random.wrap_key_data(s, impl=jax.random.key_impl(l))
                        if _is_key(l) else s, saved, like)


def _leaf_items(pure: dict):
    return sorted((jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(pure)[0])


def signature(pure: dict) -> str:
    """Hash of every leaf's path, shape and dtype (not values)."""
    items = [f"{path}:{tuple(x.shape)}:{x.dtype}" for path, x in _leaf_items(pure)]
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def describe(pure: dict) -> list[str]:
    return [f"{path} {tuple(x.shape)} {x.dtype}" for path, x in _leaf_items(pure)]


SEAL = "jaxnets_files.json"   # per-checkpoint file sizes, written once its save has finished


class IntegrityError(ValueError):
    """A checkpoint's files are not what its save committed (a size changed, a file is gone)."""


SET_ASIDE = ("corrupt-",)   # names of checkpoints moved aside (invisible to orbax)


class Checkpointer:
    """`read_only`: for the commands on a trained workdir: nothing is created, renamed or saved."""

    def __init__(self, workdir: str, keep: int, read_only: bool = False):
        self.directory = storage.join(workdir, "checkpoints")   # local (absolute), gs:// or s3://
        self.read_only = read_only
        if storage.is_remote(self.directory) and not read_only and jax.process_index() == 0:
            self._remove_unfinished_saves()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None if read_only else keep, enable_async_checkpointing=True,
                create=not read_only, read_only=read_only,
                save_interval_steps=0 if read_only else 1),
            item_names=("state", "meta"),
        )
        self._unsealed: set[int] = set()   # saved by this run, file sizes not yet recorded

    def _remove_unfinished_saves(self) -> None:
        """An object store has no atomic rename: a save cut short leaves objects under STEP/
        without commit_success.txt (orbax ignores them). They are removed before resuming, so the
        step is saved anew rather than over the killed save's leftovers."""
        for name in storage.listdir(self.directory):
            part = storage.join(self.directory, name)
            if name.isdigit() and not storage.exists(storage.join(part, "commit_success.txt")):
                storage.remove_tree(part)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def set_aside(self) -> list[str]:
        """Checkpoints earlier runs moved aside as damaged (`corrupt-STEP`)."""
        return [d for d in storage.listdir(self.directory) if d.startswith(SET_ASIDE)]

    def move_aside(self, step: int) -> str:
        """Rename checkpoint `step` to `corrupt-STEP` (nothing is deleted). The dash matters:
        orbax reads digit-only names and `PREFIX_STEP` names as steps, so `corrupt-150` stays
        invisible to the manager, its step listing and its max_to_keep clean-up."""
        source = storage.join(self.directory, str(step))
        target = storage.join(self.directory, f"corrupt-{step}")
        n = 1
        while storage.exists(target):
            n += 1
            target = storage.join(self.directory, f"corrupt-{step}-{n}")
        storage.rename_dir(source, target)
        self.manager.reload()
        return target

    def save(self, step: int, pure_state: dict, meta: dict, force: bool = False) -> None:
        with _storage_errors(self.directory, step):
            if self.manager.should_save(step) or force:
                self._unsealed.add(step)
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(to_saveable(pure_state)),
                meta=ocp.args.JsonSave(meta)), force=force)
            # manager.save first waited for the previous save to finish; this one may still run.
            self._seal_finished(exclude=step)

    def _seal_finished(self, exclude: int | None = None) -> None:
        """Record the size of every file of each finished save in `STEP/jaxnets_files.json`.
        orbax reads only the files its index references, so a truncated file it happens not to
        need (orbax leaves some after merging per-process indexes) would pass unnoticed;
        `verify_files` refuses any size change. A save killed before sealing has no record and is
        trusted to orbax alone, as are checkpoints of older jaxnets versions."""
        if jax.process_index() != 0 or self.read_only:
            return
        for step in sorted(self._unsealed - {exclude}):
            part = storage.join(self.directory, str(step))
            try:
                files = {rel: n for rel, n in storage.file_sizes(part).items() if rel != SEAL}
            except FileNotFoundError:   # removed by max_to_keep meanwhile
                files = {}
            if files:
                write_json(storage.join(part, SEAL), {"files": files})
            self._unsealed.discard(step)

    def verify_files(self, step: int) -> None:
        """Raise IntegrityError if a file recorded at save time is missing or changed size."""
        part = storage.join(self.directory, str(step))
        if not storage.exists(storage.join(part, SEAL)):
            return
        files = json.loads(storage.read_text(storage.join(part, SEAL)))["files"]
        now = storage.file_sizes(part)
        for rel, size in sorted(files.items()):
            if rel not in now:
                raise IntegrityError(f"file {rel} is missing")
            if now[rel] != size:
                raise IntegrityError(f"file {rel} is {now[rel]} bytes, {size} when saved")

    def restore(self, step: int, abstract_pure: dict, expected_signature: str) -> tuple[dict, dict]:
        self.verify_files(step)
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("signature") != expected_signature:
            saved = set(meta.get("layout", []))
            now = describe(abstract_pure)
            diff = [line for line in now if line not in saved][:3]
            raise UserError(
                f"The workdir's checkpoint {self.directory}/{step} holds a different model or "
                f"optimizer than this config builds (state signature {meta.get('signature')} vs "
                f"{expected_signature}; e.g. this config has {diff or 'fewer arrays'} that the "
                "checkpoint lacks). Use a fresh --workdir, or delete the checkpoints to start over.")
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              to_saveable(abstract_pure))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"]
        return from_saveable(restored, abstract_pure), meta

    def wait(self) -> None:
        # Errors of the asynchronous save thread (a full disk) surface here.
        with _storage_errors(self.directory, None):
            self.manager.wait_until_finished()
        self._seal_finished()

    def close(self) -> None:
        with _storage_errors(self.directory, None):
            self.manager.wait_until_finished()
            self._seal_finished()
            self.manager.close()


_STORAGE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)
_STORAGE_TEXTS = ("No space left", "File too large", "Disk quota", "Read-only file system")


class _storage_errors:
    """Turns a full disk (or file-size limit, quota, read-only mount) during a checkpoint save,
    raised by orbax in the caller or later from its save thread, into a UserError: the fix is on
    the user's side, and the checkpoints already written are untouched."""

    def __init__(self, directory: str, step: int | None):
        self.directory, self.step = directory, step

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or isinstance(error, UserError) or not isinstance(error, Exception):
            return False
        chain, e = [], error
        while e is not None and len(chain) < 10:   # orbax wraps the OSError in its own errors
            chain.append(e)
            e = e.__cause__ or e.__context__
        if not any((isinstance(x, OSError) and x.errno in _STORAGE_ERRNOS)
                   or any(t in str(x) for t in _STORAGE_TEXTS) for x in chain):
            return False
        text = " ".join(str(x) for x in chain)
        step = re.search(r"/(\d+)\.orbax-checkpoint-tmp", text)
        step = step.group(1) if step else self.step
        cause = next((t for t in _STORAGE_TEXTS if t in text), None) or \
            next(os.strerror(x.errno) for x in chain if isinstance(x, OSError) and x.errno in _STORAGE_ERRNOS)
        which = f"checkpoint {step}" if step is not None else "a checkpoint"
        raise UserError(
            f"Saving {which} in {self.directory} failed: the disk is full or a file-size limit "
            f"was hit ({cause}). The checkpoints saved before are intact (the partial save is "
            "left in a *.orbax-checkpoint-tmp folder, which resuming ignores); free space (or "
            "point --workdir at a larger disk) and run the same command again to resume from "
            "the newest one.") from error


def param_digest(params_pure: dict) -> str:
    """A sha256 hex digest of every parameter array, the same on any topology, with nothing
    gathered: each array is reduced on its devices (`_array_lanes`) to 4 words that depend on
    every element's bits and global position, and only those words reach the host, where
    they are hashed with the arrays' paths, dtypes and shapes in sorted path order."""
    items = list(_leaf_items(params_pure))
    arrays = [x if isinstance(x, jax.Array) else jnp.asarray(x) for _, x in items]
    lanes = np.asarray(_all_lanes(arrays)) if arrays else []
    h = hashlib.sha256()
    for (path, _), x, words in zip(items, arrays, lanes):
        h.update(f"{path}:{np.dtype(x.dtype)}:{tuple(x.shape)}".encode())
        h.update(words.astype("<u4").tobytes())
    return h.hexdigest()


_LANE_SEEDS = (0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F)


def _fmix32(x):
    """MurmurHash3's 32-bit finaliser: every input bit flips each output bit with p ~ 1/2."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _element_bits(x):
    """uint32 words holding each element's exact bits (8-byte types: two words each)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = np.dtype(x.dtype).itemsize
    if size == 4 or size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)


@jax.jit
def _all_lanes(arrays):
    """[len(arrays), 4]: every array's lanes from one program: one compile per model rather
    than one per parameter shape (which had slowed the end of every short run)."""
    return jnp.stack([_array_lanes(x) for x in arrays])


def _array_lanes(x):
    """4 uint32 sums over elements of mix(bits, global index): wrap-around integer sums do not
    depend on the order XLA adds the shards in, so every sharding gives the same words, and
    the output is 16 bytes (replicated): no device or host ever holds another's shard. The
    four lanes are one reduction over a trailing axis of 4 (one fusion per array)."""
    bits = _element_bits(x)
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for d in reversed(range(bits.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, d) * jnp.uint32(stride)
        stride = (stride * bits.shape[d]) % (1 << 32)
    seeds = jnp.asarray(_LANE_SEEDS, jnp.uint32)
    lane = jnp.arange(len(_LANE_SEEDS), dtype=jnp.uint32)
    mixed = _fmix32(bits[..., None] ^ _fmix32(index[..., None] * seeds + lane))
    return jnp.sum(mixed, axis=tuple(range(bits.ndim)), dtype=jnp.uint32)


def write_json(path: str, obj) -> None:
    """Atomic, strict JSON: NaN/Infinity become null and a dict gets their names in "nonfinite"."""
    bad: list[str] = []
    clean = strict_json(json.loads(json.dumps(obj, default=float)), bad=bad)
    if bad and isinstance(clean, dict):
        clean["nonfinite"] = bad
    storage.write_text(path, json.dumps(clean, indent=2, allow_nan=False))

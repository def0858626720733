"""Orbax checkpoints of the whole training state plus JSON metadata (step, data iterator, ...).

The state is saved as a pure dict of arrays; typed PRNG keys (an `nnx.Rngs` held by a
module) are stored as raw key data. A structural signature of the state is saved beside it
so that a workdir holding another model's checkpoint is refused with a clear message
instead of a shape error deep inside orbax.
"""
from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxnets.errors import UserError


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


class Checkpointer:
    def __init__(self, workdir: str, keep: int):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                                 create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, pure_state: dict, meta: dict, force: bool = False) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(to_saveable(pure_state)),
            meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, step: int, abstract_pure: dict, expected_signature: str) -> tuple[dict, dict]:
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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def param_digest(params_pure: dict) -> str:
    """sha256 over every parameter array (path, dtype, shape, bytes) in sorted path order."""
    h = hashlib.sha256()
    for path, x in _leaf_items(params_pure):
        arr = np.asarray(jax.device_get(x))
        h.update(f"{path}:{arr.dtype}:{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)

"""Resuming a workdir: fall back past unreadable checkpoints, refuse a changed data order.

`restore_newest_good` tries the checkpoints newest first. One that cannot be read (a truncated
or missing array file, unreadable metadata, a save cut short by a kill) is reported, renamed to
`checkpoints/corrupt-STEP` (nothing is deleted) and the next older one is tried; when every
checkpoint fails the run is refused rather than silently started over. A checkpoint of another
model or optimizer is not "corrupt": its UserError stops the run at once.

`check_data` compares the data description saved with the checkpoint (global batch size, seed,
dataset name and size, train split) with this run's: the training order is a pure function of
(seed, step, batch size, dataset), so resuming with any of them changed would silently train on
another sequence of batches. `train.restart_data=True` accepts the change on purpose; it is
recorded under "restarts" in the metadata of every later checkpoint.
"""
from __future__ import annotations

import jax

from jaxnets.errors import UserError

DATA_KEYS = ("batch_size", "seed", "name", "size", "train_split")
_OVERRIDE = {"batch_size": "data.batch_size", "seed": "seed", "name": "data.name",
             "train_split": "data.train_split"}


def restore_newest_good(checkpointer, abstract_pure: dict, expected_signature: str,
                        log=print) -> tuple[int, dict, dict] | None:
    """(step, restored pure state, meta) of the newest readable checkpoint, or None if the
    workdir holds no checkpoint at all."""
    steps = checkpointer.all_steps()
    if not steps:
        return None
    failures = []
    for step in reversed(steps):
        try:
            restored, meta = checkpointer.restore(step, abstract_pure, expected_signature)
            _check_meta(meta)
        except UserError:
            raise
        except Exception as e:   # noqa: BLE001 - any read failure means this checkpoint is unusable
            reason = _reason(e)
            failures.append((step, reason))
            moved = _move_aside(checkpointer, step)
            log(f"Checkpoint {checkpointer.directory}/{step} cannot be restored ({reason}); moved "
                f"it to {moved} and falling back to the previous checkpoint.")
            continue
        if failures:
            log(f"Fell back to checkpoint step {step} (newer unreadable: "
                f"{', '.join(str(s) for s, _ in failures)}).")
        return step, restored, meta
    listed = "; ".join(f"step {s}: {r}" for s, r in failures)
    raise UserError(
        f"None of the checkpoints in {checkpointer.directory} can be restored ({listed}). They "
        "were moved aside as corrupt-STEP folders, not deleted. Refusing to start over silently: "
        "to train from scratch use a fresh --workdir (or move the checkpoints folder away).")


def _reason(error: Exception) -> str:
    text = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0]
    return f"{type(error).__name__}: {text[:200]}"


def _check_meta(meta) -> None:
    """Metadata that parses but lacks what resuming needs is as unusable as a missing file."""
    if not isinstance(meta, dict) or not isinstance(meta.get("data"), dict) \
            or not isinstance(meta["data"].get("step"), int):
        raise ValueError(f"checkpoint metadata has no data step: {str(meta)[:200]}")


def _move_aside(checkpointer, step: int) -> str:
    # Every process must see the same checkpoint list, but only one may rename the directory.
    multi = jax.process_count() > 1
    if multi:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"jaxnets_corrupt_{step}_before")
    moved = f"{checkpointer.directory}/corrupt-{step}"
    if jax.process_index() == 0:
        moved = checkpointer.move_aside(step)
    if multi:
        multihost_utils.sync_global_devices(f"jaxnets_corrupt_{step}_after")
        checkpointer.manager.reload()
    return moved


def data_description(config, size: int, restarts: list | None = None) -> dict:
    """What fixes the training order, as saved in every checkpoint's meta["data"]."""
    return {"batch_size": config.data.batch_size, "seed": config.seed, "name": config.data.name,
            "size": size, "train_split": config.data.train_split, "restarts": list(restarts or [])}


def check_data(saved: dict, current: dict, step: int, restart_data: bool) -> list:
    """The restart history to carry on; raises UserError when the data changed without
    `restart_data`. Keys absent from an older checkpoint are not compared."""
    changed = {k: (saved[k], current[k]) for k in DATA_KEYS
               if k in saved and k in current and saved[k] != current[k]}
    restarts = list(saved.get("restarts", []))
    if not changed:
        return restarts
    if restart_data:
        restarts.append({"step": step, **{k: {"old": old, "new": new} for k, (old, new) in changed.items()}})
        return restarts
    listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
    old_flags = " ".join(f"--config.{_OVERRIDE[k]}={old!r}" for k, (old, _) in changed.items()
                         if k in _OVERRIDE)
    size_note = (" (the dataset size changed: the data options or files differ from the "
                 "checkpointed run's)") if "size" in changed else ""
    raise UserError(
        f"The checkpoint at step {step} was trained with other data settings than this run: "
        f"{listed}{size_note}. Resuming would silently continue with another order of batches. "
        f"Either resume with the old values{' (' + old_flags + ')' if old_flags else ''}, or "
        "keep the weights and start a new data order from this step with "
        "--config.train.restart_data=True (recorded in the checkpoint metadata).")

"""Resuming a workdir: fall back past damaged checkpoints, never lose progress, refuse a changed
data order.

`restore_newest_good` tries the checkpoints newest first. Only an integrity failure makes a
checkpoint "corrupt" (`is_integrity_failure`: a file whose size differs from its seal, a
truncated or undecodable array or metadata file, a missing file of a committed save): it is
reported, renamed to `checkpoints/corrupt-STEP` (nothing is deleted) and the next older one is
tried. Any other failure to read (permission denied, an I/O or network error, anything
unexpected) stops the run with exit status 2 naming the file, and nothing is moved: the
checkpoint may well be healthy. A workdir whose checkpoints are all unreadable, or that holds
only checkpoints set aside as corrupt, is refused on every rerun rather than trained from step 0;
`train.accept_lost_checkpoints=True` says that starting over is wanted. A checkpoint of another
model or optimizer is not "corrupt": its UserError stops the run at once. Read-only commands
(`read_only=True`) fall back the same way but never rename anything.

`check_data` compares the data description saved with the checkpoint (global batch size, seed,
dataset name and size, train split) with this run's: the training order is a pure function of
(seed, step, batch size, dataset), so resuming with any of them changed would silently train on
another sequence of batches. `train.restart_data=True` accepts the change on purpose; it is
recorded under "restarts" in the metadata of every later checkpoint.
"""
from __future__ import annotations

import json
import re

import jax
from jax.experimental import multihost_utils

from jaxnets.errors import UserError
from jaxnets.train.checkpoint import IntegrityError

DATA_KEYS = ("batch_size", "seed", "name", "size", "train_split")
_OVERRIDE = {"batch_size": "data.batch_size", "seed": "seed", "name": "data.name",
             "train_split": "data.train_split"}


def restore_newest_good(checkpointer, abstract_pure: dict, expected_signature: str,
                        log=print, read_only: bool = False,
                        accept_lost: bool = False) -> tuple[int, dict, dict] | None:
    """(step, restored pure state, meta) of the newest readable checkpoint, or None when there
    is nothing to resume from and starting at step 0 loses nothing (or `accept_lost`)."""
    steps = checkpointer.all_steps()
    set_aside = checkpointer.set_aside()
    if not steps:
        if set_aside and not accept_lost and not read_only:
            raise UserError(
                f"{checkpointer.directory} holds no readable checkpoint, only ones set aside as "
                f"damaged ({', '.join(set_aside)}). Refusing to train from step 0 over them: "
                "inspect or move them away, or start over on purpose with "
                "--config.train.accept_lost_checkpoints=True (they are kept).")
        return None
    failures = []
    for step in reversed(steps):
        try:
            restored, meta = checkpointer.restore(step, abstract_pure, expected_signature)
            _check_meta(meta)
        except UserError:
            raise
        except Exception as e:   # noqa: BLE001 - classified below: corrupt, or stop the run
            reason = _reason(e)
            if not is_integrity_failure(e):
                raise UserError(
                    f"Checkpoint {checkpointer.directory}/{step} could not be read: "
                    f"{failed_file(e) or checkpointer.directory + '/' + str(step)}: {reason}. "
                    "This is not damage to the checkpoint (permission, I/O or storage error), so "
                    "nothing was moved or changed; fix the access and run the same command again."
                ) from e
            failures.append((step, reason))
            if read_only:
                log(f"Checkpoint {checkpointer.directory}/{step} is damaged ({reason}); "
                    "reading the previous one (nothing is changed by this command).")
                continue
            moved = _move_aside(checkpointer, step)
            log(f"Checkpoint {checkpointer.directory}/{step} is damaged ({reason}); moved "
                f"it to {moved} and falling back to the previous checkpoint.")
            continue
        if failures:
            log(f"Fell back to checkpoint step {step} (newer unreadable: "
                f"{', '.join(str(s) for s, _ in failures)}).")
        return step, restored, meta
    listed = "; ".join(f"step {s}: {r}" for s, r in failures)
    if read_only:
        raise UserError(f"None of the checkpoints in {checkpointer.directory} can be read ({listed}).")
    if accept_lost:
        log(f"None of the checkpoints in {checkpointer.directory} can be restored ({listed}); they "
            "were set aside as corrupt-STEP and training starts over (train.accept_lost_checkpoints).")
        return None
    raise UserError(
        f"None of the checkpoints in {checkpointer.directory} can be restored ({listed}). They "
        "were moved aside as corrupt-STEP folders, not deleted. Refusing to start over silently "
        "(this repeats on every rerun): inspect them, use a fresh --workdir, or start over on "
        "purpose with --config.train.accept_lost_checkpoints=True.")


# TensorStore's status codes (its errors carry them as a message prefix) that mean the bytes
# are not what was written: truncation, undecodable data, a referenced file that is gone.
_INTEGRITY_CODES = ("OUT_OF_RANGE", "DATA_LOSS", "NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION")
_ACCESS_TEXTS = ("PERMISSION_DENIED", "UNAUTHENTICATED", "UNAVAILABLE", "DEADLINE_EXCEEDED",
                 "RESOURCE_EXHAUSTED", "Permission denied", "Input/output error")


def _chain(error: BaseException) -> list[BaseException]:
    chain, e = [], error
    while e is not None and len(chain) < 12:   # orbax wraps the store's error in its own
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def is_integrity_failure(error: BaseException) -> bool:
    """True when `error` says the checkpoint's bytes are damaged or incomplete; False for
    permission, I/O and storage errors and anything unrecognised (those never move a checkpoint)."""
    chain = _chain(error)
    for e in chain:   # an access problem anywhere in the chain wins: the data may be fine
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            return False
        if any(t in str(e) for t in _ACCESS_TEXTS):
            return False
    for e in chain:
        if isinstance(e, (IntegrityError, FileNotFoundError, json.JSONDecodeError, MetaError)):
            return True
        if str(e).lstrip().startswith(_INTEGRITY_CODES):
            return True
    return False


def failed_file(error: BaseException) -> str | None:
    """The file an error is about, when it names one (OSError.filename or TensorStore's text)."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.filename:
            return str(e.filename)
        found = re.findall(r'(?:local file|Failed to open:) "([^"]+)"', str(e)) \
            or re.findall(r'"(gs://[^"]+|s3://[^"]+)"', str(e))
        if found:
            return found[-1]
    return None


def _reason(error: Exception) -> str:
    text = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0]
    return f"{type(error).__name__}: {text[:200]}"


class MetaError(ValueError):
    """Checkpoint metadata that parses but lacks what resuming needs."""


def _check_meta(meta) -> None:
    """Metadata that parses but lacks what resuming needs is as unusable as a missing file."""
    if not isinstance(meta, dict) or not isinstance(meta.get("data"), dict) \
            or not isinstance(meta["data"].get("step"), int):
        raise MetaError(f"checkpoint metadata has no data step: {str(meta)[:200]}")


def _move_aside(checkpointer, step: int) -> str:
    # Every process must see the same checkpoint list, but only one may rename the directory.
    multi = jax.process_count() > 1
    if multi:
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

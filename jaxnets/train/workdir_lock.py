"""One writer per workdir: the advisory lock a `jaxnets train` run holds from start to end.

`WORKDIR/jaxnets.lock` records the holder (host, pid, start time, a heartbeat). On a local or
network file system the kernel's `flock` decides: a second run finds the lock held and exits
with status 2 naming the holder; a holder that died released it with its last breath, and the
next run takes the lock over and says whose it was. On an object store (gs://, s3://), where
nothing like flock exists, the record alone decides: a holder refreshes its heartbeat every
`HEARTBEAT_S` seconds; a record older than `STALE_S`, or one whose holder was on this host and
is no longer running, is a dead holder's.

Multi-process runs: process 0 takes the lock for the job and tells the others the outcome (one
broadcast), so every process stops with the same message. Commands that only read a trained
workdir (eval, sample, generate, translate, export) take no lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxnets.errors import UserError
from jaxnets import storage

LOCK_NAME = "jaxnets.lock"
HEARTBEAT_S = 20.0
STALE_S = 90.0


def _describe(record: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.get("started", 0)))
    return f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, started {since}"


def _alive(pid) -> bool:
    """Whether process `pid` of this host is running (a record's holder on the same host)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):   # another user's process, or no pid
        return True
    return True


def _parse(text: str) -> dict | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "pid" in record else None


class WorkdirLock:
    """Held from `acquire()` until `release()` (or the process's death, on local disks)."""

    def __init__(self, workdir: str, log=print):
        self.path = storage.join(workdir, LOCK_NAME)
        self.workdir = workdir
        self.log = log
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self._file = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> "WorkdirLock":
        if storage.is_remote(self.path):
            self._acquire_record()
        else:
            self._acquire_flock()
        return self

    def _refuse(self, holder: dict | None) -> None:
        who = _describe(holder) if holder else "another process (no record yet)"
        raise UserError(
            f"Workdir {self.workdir} is in use by another `jaxnets train` run ({who}); its lock is "
            f"{self.path}. Two runs writing one workdir would overwrite each other's checkpoints "
            "and metrics: wait for it to end (or stop it), or use another --workdir.")

    def _acquire_flock(self) -> None:
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _parse(f.read())
            f.close()
            self._refuse(holder)
        f.seek(0)
        previous = _parse(f.read())
        if previous:   # the holder died without releasing (kill -9, lost host): flock freed it
            self.log(f"Taking over the lock of workdir {self.workdir} from a run that is no longer "
                     f"running ({_describe(previous)}).")
        self._file = f
        self._write_local()
        self._start_heartbeat()

    def _write_local(self) -> None:
        self.record["heartbeat"] = time.time()
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps(self.record))
        self._file.flush()

    def _acquire_record(self) -> None:
        previous = _parse(storage.read_text(self.path)) if storage.exists(self.path) else None
        if previous:
            age = time.time() - float(previous.get("heartbeat", previous.get("started", 0)))
            dead_here = previous.get("host") == self.record["host"] and not _alive(previous.get("pid"))
            if age < STALE_S and not dead_here:
                self._refuse(previous)
            why = "is no longer running" if dead_here else f"last beat {age:.0f} s ago"
            self.log(f"Taking over the lock of workdir {self.workdir} from a run that {why} "
                     f"({_describe(previous)}).")
        self.record["heartbeat"] = time.time()
        storage.write_text(self.path, json.dumps(self.record))
        time.sleep(1.0)   # no compare-and-swap on an object store: a racing writer shows up here
        now = _parse(storage.read_text(self.path))
        if not now or now.get("pid") != self.record["pid"] or now.get("host") != self.record["host"]:
            self._refuse(now)
        self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    if self._file is not None:
                        self._write_local()
                    else:
                        self.record["heartbeat"] = time.time()
                        storage.write_text(self.path, json.dumps(self.record))
                except OSError:   # a transient storage error: the next beat tries again
                    pass

        self._beat = threading.Thread(target=beat, name="jaxnets-lock-heartbeat", daemon=True)
        self._beat.start()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()   # empty: released cleanly (a record left means a dead holder)
            self._file.flush()
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        elif storage.is_remote(self.path) and storage.exists(self.path):
            storage.remove(self.path)


def lock_for_job(workdir: str, log=print) -> WorkdirLock | None:
    """Process 0 takes the workdir lock; on multi-process runs every process learns whether it
    did (one broadcast) and all of them stop alike when it did not. Returns the lock (process 0)."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir, log).acquire()
        except UserError as e:
            error = e
    if jax.process_count() > 1:
        ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok and error is None:
            raise UserError(f"Process 0 could not take the lock of workdir {workdir} (its message "
                            "names the holder); this process stops with it.")
    if error is not None:
        raise error
    return lock

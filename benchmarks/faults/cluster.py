"""Fault cases of a busy cluster (issue #23): a launcher killed while its ranks save, two runs on
one workdir, a checkpoint the run may not read, and a run on a gs:// workdir (local GCS emulator)
killed and resumed. Each returns {"name", "trials", "survived", "digest_mismatch", ...}; the
helpers (tiny digits CNN, `run`, `final`, ...) are suite.py's."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from jaxnets import storage
from benchmarks.faults.suite import (REPO, STEPS, TINY, _env, _newest_step, command, final, run,
                                     train_steps)

LAUNCH = [sys.executable, "-m", "jaxnets.cli", "launch", "--processes", "2", "--devices-per-process", "1",
          "--", "train", *TINY]


def _alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] != "Z":
                    out.append(pid)
        except OSError:
            continue
    return out


def _children(pid) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _launch(workdir, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([*LAUNCH, "--workdir", workdir], cwd=REPO, env=_env(), text=True,
                          capture_output=True, timeout=timeout)


def _resumed_ok(workdir, done, digest) -> tuple[bool, bool]:
    ok = done.returncode == 0 and os.path.exists(os.path.join(workdir, "final.json"))
    same = ok and final(workdir)["param_digest"] == digest
    return ok and same and train_steps(workdir) == list(range(1, STEPS + 1)), ok and not same


def launcher_kill_during_save(root, trials: int) -> dict:
    """SIGKILL `jaxnets launch` (2 ranks) while orbax's temporary save folder exists: no rank may
    be alive 10 s later, and the relaunched job ends with the uninterrupted 2-process digest."""
    reference = os.path.join(root, "mp_reference")
    assert _launch(reference).returncode == 0
    digest = final(reference)["param_digest"]
    survived, mismatch, orphans, in_save = 0, 0, 0, 0
    for i in range(trials):
        workdir = os.path.join(root, f"launcher_kill_{i}")
        proc = subprocess.Popen([*LAUNCH, "--workdir", workdir], cwd=REPO, env=_env(), text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, saving = time.time() + 300, False
        while proc.poll() is None and time.time() < deadline:
            if _newest_step(os.path.join(workdir, "metrics.jsonl")) >= 6 + 5 * i:
                saving = bool(glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*")))
                if saving:
                    break
            time.sleep(0.002)
        ranks = _children(proc.pid)
        proc.kill()
        proc.wait()
        in_save += saving
        deadline = time.time() + 10
        while _alive(ranks) and time.time() < deadline:
            time.sleep(0.1)
        left = _alive(ranks)
        orphans += len(left)
        for pid in left:   # never leave them running, whatever the verdict
            os.kill(pid, signal.SIGKILL)
        ok, bad = _resumed_ok(workdir, _launch(workdir), digest)
        survived += ok and not left
        mismatch += bad
    return {"name": "launcher_sigkill_during_save", "trials": trials, "survived": survived,
            "digest_mismatch": mismatch, "ranks_alive_10s_after": orphans, "kills_in_save": in_save}


def concurrent_runs(root, digest: str) -> dict:
    """Two `jaxnets train` started at once on one workdir: one exits 2 within 10 s naming the
    other's pid, the other ends with the lone run's digest."""
    workdir = os.path.join(root, "concurrent")
    procs = [subprocess.Popen(command(workdir), cwd=REPO, env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    t0, ended, locked_at = time.time(), {}, None
    lock = os.path.join(workdir, "jaxnets.lock")
    while len(ended) < 2 and time.time() - t0 < 600:
        if locked_at is None:   # when the winner took the lock (its record), start-up excluded
            try:
                locked_at = json.loads(open(lock).read())["started"]
            except (OSError, ValueError, KeyError):
                pass
        for k, p in enumerate(procs):
            if k not in ended and p.poll() is not None:
                ended[k] = time.time()
        time.sleep(0.05)
    outs = [p.communicate() for p in procs]
    refused = [k for k, p in enumerate(procs) if p.returncode == 2]
    winners = [k for k, p in enumerate(procs) if p.returncode == 0]
    ok = len(refused) == 1 and len(winners) == 1
    named = ok and f"pid {procs[winners[0]].pid}" in outs[refused[0]][1]
    # Seconds from the winner taking the lock to the loser's exit (both start alike; a loaded
    # machine's start-up, imports included, is not the lock's doing).
    waited = ended[refused[0]] - (locked_at or t0) if ok else None
    fast = ok and waited < 10
    same = ok and final(workdir)["param_digest"] == digest
    return {"name": "concurrent_runs", "trials": 1, "survived": int(ok and named and fast and same),
            "digest_mismatch": int(ok and not same),
            "refused_after_s": round(waited, 1) if ok else None,
            "started_to_refused_s": round(ended[refused[0]] - t0, 1) if ok else None}


def permission_error(root, digest: str) -> dict:
    """A checkpoint the run may not read (root's override dropped with setpriv): exit 2 naming
    the file, nothing moved; readable again, the run resumes to the lone run's digest."""
    if shutil.which("setpriv") is None:
        return {"name": "permission_error", "trials": 0, "survived": 0, "digest_mismatch": 0,
                "skipped": "needs util-linux's setpriv"}
    workdir = os.path.join(root, "permission")
    done = run(workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    os.remove(os.path.join(workdir, "final.json"))   # as if killed after its last save
    newest = os.path.join(workdir, "checkpoints", str(STEPS))
    files = glob.glob(os.path.join(newest, "state", "**", "d", "*"), recursive=True)
    for path in files:
        os.chmod(path, 0)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all",
            *command(workdir)]
    refused = subprocess.run(argv, cwd=REPO, env=_env(), text=True, capture_output=True, timeout=300)
    named = refused.returncode == 2 and "PERMISSION_DENIED" in refused.stderr and newest in refused.stderr
    kept = sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    for path in files:
        os.chmod(path, 0o644)
    resumed = run(workdir)
    ok, bad = _resumed_ok(workdir, resumed, digest)
    return {"name": "permission_error", "trials": 1, "survived": int(named and kept and ok),
            "digest_mismatch": int(bad), "exit": refused.returncode, "named": named,
            "kept": kept, "resumed": ok, "resumed_exit": resumed.returncode,
            "steps_logged": len(train_steps(workdir)),
            "log": "" if named and kept and ok else refused.stderr[-1500:] + resumed.stderr[-1500:]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cloud_workdir(root) -> dict:
    """`--workdir gs://...` on a local GCS emulator (STORAGE_EMULATOR_HOST): SIGKILL after the
    first checkpoint, rerun: the digest of the same run on local disk, uninterrupted (its
    checkpoint spacing differs from the other cases', so it is computed here); `jaxnets eval`
    reads it back."""
    try:
        import gcp_storage_emulator  # noqa: F401  (the emulator runs in its own process)
    except ImportError:
        return {"name": "cloud_workdir", "trials": 0, "survived": 0, "digest_mismatch": 0,
                "skipped": "gcp-storage-emulator is not installed (pip install .[dev])"}
    port = _free_port()
    # The PyPI emulator, with downloads that carry their generation as GCS's do (gcs_emulator.py).
    emulator = subprocess.Popen([sys.executable, "-m", "benchmarks.faults.gcs_emulator", "start", "--host",
                                 "localhost", "--port", str(port), "--in-memory", "--default-bucket", "faults"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved_environ = dict(os.environ)
    env = {"STORAGE_EMULATOR_HOST": f"http://localhost:{port}"}
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("localhost", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        workdir = "gs://faults/run"
        os.environ.update(env)   # this process polls the bucket through the same helpers
        # Checkpoints every 20 steps: the kill lands after the first one (or inside the second
        # save, which the rerun then makes again).
        every = "--config.train.checkpoint_every=20"
        first = f"{workdir}/checkpoints/20/commit_success.txt"
        slow = {**env, "JAXNETS_FAULT_STEP_DELAY_S": "0.2"}   # the kill must land before the end
        proc = subprocess.Popen(command(workdir, every), cwd=REPO, env=_env(slow), text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, killed = time.time() + 300, False
        while proc.poll() is None and time.time() < deadline:
            if storage.exists(first):   # the first checkpoint is committed
                proc.kill()
                killed = True
                break
            time.sleep(0.2)
        proc.wait()
        done = run(workdir, every, env=env)
        # The reference: the same run (checkpoints every 20 steps) on local disk, uninterrupted.
        local = os.path.join(root, "cloud_reference")
        assert run(local, every).returncode == 0
        digest = final(local)["param_digest"]
        ok = done.returncode == 0
        got = json.loads(storage.read_text(workdir + "/final.json"))["param_digest"] if ok else None
        evaluated = subprocess.run([sys.executable, "-m", "jaxnets.cli", "eval", "--workdir", workdir],
                                   cwd=REPO, env=_env(env), text=True, capture_output=True, timeout=300)
        eval_ok = evaluated.returncode == 0 and f"step {STEPS}" in evaluated.stdout
        return {"name": "cloud_workdir", "trials": 1, "survived": int(ok and killed and got == digest and eval_ok),
                "digest_mismatch": int(ok and got != digest), "killed": killed,
                "eval_exit": evaluated.returncode, "resumed_exit": done.returncode, "got": got, "want": digest,
                "log": (done.stderr[-3000:] + "\n----- eval:\n" + evaluated.stderr[-3000:]) if not (ok and eval_ok) else ""}
    finally:   # this process's environment as it was (storage.honour_emulator added to it)
        os.environ.clear()
        os.environ.update(saved_environ)
        emulator.kill()
        emulator.wait()

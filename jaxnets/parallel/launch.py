"""`jaxnets launch`: N local processes of one multi-controller job on JAX's own runtime.

    jaxnets launch --processes 2 --devices-per-process 2 -- train --config experiments/mnist_cnn.py:smoke --workdir runs/x

Each rank is a direct child (`python -m jaxnets.cli train ...`) with
JAXNETS_COORDINATOR=127.0.0.1:PORT (a free port), JAXNETS_NUM_PROCESSES and JAXNETS_PROCESS_ID
set, so `jax.distributed.initialize` joins them over localhost (gloo collectives on CPU); the
coordinator listens on 127.0.0.1 only. `--devices-per-process K` gives each rank K forced CPU
devices (what a host with K accelerators looks like), with thread settings that cannot deadlock
XLA's CPU collectives (jaxnets/platform/cpu_threads.py). Output lines are prefixed with
"[rank] ". The launcher exits with the first non-zero exit status of any rank (0 when all
succeed); when one rank fails, the others get SIGTERM and, after `--grace` seconds, SIGKILL, so
a broken job never hangs. SIGTERM or SIGINT to the launcher is passed on to every rank (a
preemption: they agree on a step, save and exit 0; a rank still running 4 x `--grace` seconds
after the signal is killed). Ranks never outlive the
launcher, however it ends: each asks the kernel for SIGKILL when its parent dies
(PR_SET_PDEATHSIG) and also watches its parent's pid (`die_with_launcher`). On a real cluster no
launcher is needed: see docs/cluster.md.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from jaxnets.errors import UserError

LAUNCHER_PID = "JAXNETS_LAUNCHER_PID"
LOCAL_PROCESSES = "JAXNETS_LOCAL_PROCESSES"   # ranks on this machine (jaxnets/platform/cpu_threads.py)
PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, processes: int, port: int, devices: int | None) -> dict[str, str]:
    env = dict(os.environ, JAXNETS_COORDINATOR=f"127.0.0.1:{port}",
               JAXNETS_NUM_PROCESSES=str(processes), JAXNETS_PROCESS_ID=str(rank),
               PYTHONUNBUFFERED="1", **{LAUNCHER_PID: str(os.getpid())})
    if devices:
        flags = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                         if not f.startswith("--xla_force_host_platform_device_count"))
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
        env.setdefault("JAX_PLATFORMS", "cpu")
    env[LOCAL_PROCESSES] = str(processes)   # the ranks pick CPU thread settings for this many
    return env


def die_with_launcher() -> None:
    """In a rank of `jaxnets launch` (JAXNETS_LAUNCHER_PID set): die when the launcher does.

    Linux: the kernel sends SIGKILL when the parent ends (prctl PR_SET_PDEATHSIG), even if the
    launcher was SIGKILLed and even while this process sits inside a collective deaf to other
    signals. A parent that ended before the request (a race at start) is caught by comparing
    the parent pid; a watchdog thread does the same every second where prctl does not exist."""
    expected = os.environ.get(LAUNCHER_PID)
    if not expected:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):   # not Linux: the watchdog below does it
        pass
    if os.getppid() != int(expected):
        os._exit(1)

    def watch():
        while os.getppid() == int(expected):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="jaxnets-launcher-watchdog", daemon=True).start()


def _pump(rank: int, stream, lock: threading.Lock) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            sys.stdout.write(f"[{rank}] {line}")
            sys.stdout.flush()
    stream.close()


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        split = argv.index("--")
        own, command = argv[:split], argv[split + 1:]
    else:
        own, command = argv, []
    parser = argparse.ArgumentParser(prog="jaxnets launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, required=True, help="number of local processes")
    parser.add_argument("--devices-per-process", type=int, default=None,
                        help="forced CPU devices per process (default: JAX's own devices)")
    parser.add_argument("--grace", type=float, default=15.0,
                        help="seconds between SIGTERM and SIGKILL when a rank fails (default 15)")
    args = parser.parse_args(own)
    if args.processes < 1:
        raise UserError(f"--processes must be at least 1, got {args.processes}.")
    if args.devices_per_process is not None and args.devices_per_process < 1:
        raise UserError(f"--devices-per-process must be at least 1, got {args.devices_per_process}.")
    if not command or command[0] != "train":
        raise UserError("Name the job after `--`: `jaxnets launch --processes 2 -- train --config "
                        "experiments/mnist_cnn.py:smoke --workdir runs/x`.")
    return args, command


def launch(argv: list[str]) -> int:
    args, command = parse(argv)
    port = free_port()
    lock = threading.Lock()
    procs, pumps = [], []
    for rank in range(args.processes):
        p = subprocess.Popen([sys.executable, "-m", "jaxnets.cli", *command],
                             env=rank_env(rank, args.processes, port, args.devices_per_process),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        procs.append(p)
        pumps.append(threading.Thread(target=_pump, args=(rank, p.stdout, lock), daemon=True))
        pumps[-1].start()

    signalled = []

    def forward(sig, frame):
        if frame is not None and not signalled:
            signalled.append(time.time())
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    status, failed_at = 0, None
    try:
        while any(p.poll() is None for p in procs):
            for rank, p in enumerate(procs):
                code = p.poll()
                if code not in (None, 0) and status == 0:
                    status, failed_at = code, time.time()
                    print(f"[launch] rank {rank} exited with status {code}; stopping the others",
                          file=sys.stderr, flush=True)
                    forward(signal.SIGTERM, None)
            late = failed_at is not None and time.time() - failed_at > args.grace
            # A preemption save may take a while, but a rank deaf to the signal must not hang us.
            late = late or (signalled and time.time() - signalled[0] > 4 * args.grace)
            if late:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for t in pumps:
        t.join(timeout=5)
    codes = [p.returncode for p in procs]
    if status == 0:
        status = next((c for c in codes if c != 0), 0)
    if status:
        print(f"[launch] exit statuses by rank: {codes}", file=sys.stderr, flush=True)
    return 1 if status < 0 else status   # a rank killed by a signal (negative) -> 1

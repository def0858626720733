"""`jaxnets launch`: N local processes of one multi-controller job on JAX's own runtime.

    jaxnets launch --processes 2 --devices-per-process 2 -- train --config experiments/mnist_cnn.py:smoke --workdir runs/x

Each rank is a direct child (`python -m jaxnets.cli train ...`) with
JAXNETS_COORDINATOR=127.0.0.1:PORT (a free port), JAXNETS_NUM_PROCESSES and JAXNETS_PROCESS_ID
set, so `jax.distributed.initialize` joins them over localhost (gloo collectives on CPU).
`--devices-per-process K` gives each rank K forced CPU devices (what a host with K
accelerators looks like). Output lines are prefixed with "[rank] ". The launcher exits with
the first non-zero exit status of any rank (0 when all succeed); when one rank fails, the others
get SIGTERM and, after `--grace` seconds, SIGKILL, so a broken job never hangs. SIGTERM or
SIGINT to the launcher is passed on to every rank (a preemption: they agree on a step, save and
exit 0). On a real cluster no launcher is needed: see docs/cluster.md.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from jaxnets.errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, processes: int, port: int, devices: int | None) -> dict[str, str]:
    env = dict(os.environ, JAXNETS_COORDINATOR=f"127.0.0.1:{port}",
               JAXNETS_NUM_PROCESSES=str(processes), JAXNETS_PROCESS_ID=str(rank),
               PYTHONUNBUFFERED="1")
    if devices:
        flags = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                         if not f.startswith("--xla_force_host_platform_device_count"))
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
        env.setdefault("JAX_PLATFORMS", "cpu")
    return env


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

    def forward(sig, frame):
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
            if failed_at is not None and time.time() - failed_at > args.grace:
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

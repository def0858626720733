"""One multi-threaded CPU device vs one single-threaded device per core, side by side.

    python -m benchmarks.cpu_layout [--rounds 3] [--depths 20] [--out FILE]

The evidence behind `jaxnets.platform.devices.auto_cpu_devices`' rule: each round runs
`python -m benchmarks.resnet_step --cpu-devices N` for N = 0 (JAX's one device, its intra-op
pool over all cores) and N = cores (per-core devices, the batch sharded over them), as
subprocesses, and records the load average beside each, so the effect of other jobs on the
machine shows in the same file. Result: ms per step of each layout and the ratio per-core /
one-device (median over rounds; below 1: per-core devices win).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.common import ROOT, full_report


def run(devices: int, depths: list[str]) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.resnet_step", "--json", "--cpu-devices", str(devices),
           "--depths", *depths, "--iters", "6", "--warmup", "2"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {r["name"]: r["ms_per_step"] for r in json.loads(out.strip().splitlines()[-1])["results"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--depths", nargs="+", default=["20"])
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    rounds = []
    for i in range(args.rounds):
        rd = {"load_before": os.getloadavg()[0], "one_device": run(0, args.depths),
              "per_core": run(cores, args.depths)}
        rd["ratio"] = {n: rd["per_core"][n] / rd["one_device"][n] for n in rd["one_device"]}
        rounds.append(rd)
        print(f"round {i} (load {rd['load_before']:.1f}): " + ", ".join(
            f"{n}: one device {rd['one_device'][n]:.0f} ms, per-core {rd['per_core'][n]:.0f} ms "
            f"-> x{rd['ratio'][n]:.2f}" for n in rd["ratio"]), file=sys.stderr, flush=True)
    med = statistics.median
    results = [{"name": n, "one_device_ms": med(r["one_device"][n] for r in rounds),
                "per_core_ms": med(r["per_core"][n] for r in rounds),
                "ratio_per_core_over_one_device": med(r["ratio"][n] for r in rounds),
                "load_min": min(r["load_before"] for r in rounds),
                "load_max": max(r["load_before"] for r in rounds)} for n in rounds[0]["ratio"]]
    full_report("cpu_layout", argv, results, args.out, rounds=rounds)

if __name__ == "__main__":
    main()

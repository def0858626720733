"""jaxnets vs PyTorch ResNet train step, side by side: alternating rounds, per-round ratios.

    python -m benchmarks.resnet_step_compare [--rounds 2] [--out benchmarks/results/resnet_step.json]

Each round runs the PyTorch peer (`../shared/peers/torch_resnet20.py`, in the separate venv
/tmp/peers; torch is never imported here) and then `python -m benchmarks.resnet_step --json`,
each as a subprocess timing ResNet-20 and ResNet-56 (batch 128, 32x32x3, SGD momentum).
On a shared machine absolute times drift; the ratio jaxnets/torch taken within one round is
the figure to read. Writes the raw JSON of every run plus the ratios to --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

from jaxnets.runtime import GLIBC_TUNABLES

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(HERE, "..", "shared", "peers", "torch_resnet20.py")


def last_json(cmd: list[str], pin: str | None = None, tuned_allocator: bool = False) -> dict:
    env = dict(os.environ)
    if tuned_allocator:
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    if pin is not None:   # one core each, one compute thread for torch: per-core efficiency
        cmd = ["taskset", "-c", pin, *cmd]
        env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def by_result_name(run: dict) -> dict:
    return {r["name"]: r for r in run["results"]}


def ratios_over(jax_run: dict, peer_by_name: dict) -> dict:
    """jaxnets ms / peer ms per result name present in both."""
    return {r["name"]: r["ms_per_step"] / peer_by_name[r["name"]]["ms_per_step"]
            for r in jax_run["results"] if r["name"] in peer_by_name}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peer-python", default="/tmp/peers/bin/python")
    ap.add_argument("--out", default=os.path.join(HERE, "benchmarks", "results", "resnet_step.json"))
    ap.add_argument("--pin", help="run both pinned to this CPU core (taskset), torch with 1 thread")
    ap.add_argument("jax_args", nargs="*", help="extra arguments for benchmarks.resnet_step")
    args = ap.parse_args(argv)
    rounds = []
    for i in range(args.rounds):
        load = os.getloadavg()[0]
        torch_run = last_json([args.peer_python, PEER, "--json"], args.pin)
        # PyTorch again with jaxnets' malloc settings: what the allocator alone is worth.
        torch_tuned = last_json([args.peer_python, PEER, "--json"], args.pin, tuned_allocator=True)
        jax_run = last_json([sys.executable, "-m", "benchmarks.resnet_step", "--json", *args.jax_args],
                            args.pin)
        by_name, tuned_by_name = by_result_name(torch_run), by_result_name(torch_tuned)
        ratios, ratios_same_alloc = ratios_over(jax_run, by_name), ratios_over(jax_run, tuned_by_name)
        rounds.append({"load_avg_1min": load, "torch": torch_run, "torch_tuned_allocator": torch_tuned,
                       "jaxnets": jax_run, "ratio": ratios, "ratio_same_allocator": ratios_same_alloc})
        print(f"round {i}: load {load:.1f}; " + ", ".join(
            f"{n}: jaxnets {r['ms_per_step']:.0f} ms vs torch {by_name[n]['ms_per_step']:.0f} ms "
            f"-> x{ratios[n]:.2f} (torch with the same malloc: "
            f"{tuned_by_name[n]['ms_per_step']:.0f} ms -> x{ratios_same_alloc[n]:.2f})"
            for n, r in ((r["name"], r) for r in jax_run["results"])),
            flush=True)
    names = list(rounds[0]["ratio"])
    summary = [{"name": n,
                "ms_per_step": statistics.median(
                    by_result_name(rd["jaxnets"])[n]["ms_per_step"] for rd in rounds),
                "torch_ms_per_step": statistics.median(
                    by_result_name(rd["torch"])[n]["ms_per_step"] for rd in rounds),
                "ratio_jaxnets_over_torch": statistics.median(rd["ratio"][n] for rd in rounds),
                "ratio_same_allocator": statistics.median(rd["ratio_same_allocator"][n] for rd in rounds)}
               for n in names]
    for s in summary:
        s["images_per_s"] = 128 / s["ms_per_step"] * 1e3
    report = {"benchmark": "resnet_step", "device": rounds[0]["jaxnets"]["device"],
              "command": "python -m benchmarks.resnet_step_compare " + " ".join(argv or sys.argv[1:]),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "note": "2-core CPU shared with other jobs; compare the per-round ratios, not absolute times",
              "results": summary, "rounds": rounds}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: report[k] for k in ("benchmark", "device", "results")}))


if __name__ == "__main__":
    main()

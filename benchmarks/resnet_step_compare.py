"""jaxnets vs PyTorch ResNet train step, side by side: alternating rounds, per-round ratios.

    python -m benchmarks.resnet_step_compare [--rounds 3] [--variants default avx2 xla]

Each round runs the PyTorch peer (`../shared/peers/torch_resnet20.py`, in the separate venv
/tmp/peers; torch is never imported here) and then, for each variant, `python -m
benchmarks.resnet_step --json` with that variant's environment, each as a subprocess timing
ResNet-20 and ResNet-56 (batch 128, 32x32x3, SGD momentum). Variants (`VARIANTS`): `default`
(the machine's own native build), `avx2` / `portable` (`JAXNETS_NATIVE_ISA` forces that build),
`xla` (`JAXNETS_NATIVE_KERNELS=0`). On a shared machine absolute times drift; the ratios taken
within one round are the figures to read (medians over rounds in `results`). Writes the raw
JSON of every run, the machine and the ratios to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.common import machine, now, peer_script
from jaxnets.platform.allocator import GLIBC_TUNABLES

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = peer_script("torch_resnet20.py")
VARIANTS = {"default": {}, "avx2": {"JAXNETS_NATIVE_ISA": "avx2"},
            "portable": {"JAXNETS_NATIVE_ISA": "portable"}, "xla": {"JAXNETS_NATIVE_KERNELS": "0"}}


def last_json(cmd: list[str], pin: str | None = None, tuned_allocator: bool = False,
              env_extra: dict | None = None) -> dict:
    env = {**os.environ, **(env_extra or {})}
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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=["default", "avx2", "xla"], choices=list(VARIANTS))
    ap.add_argument("--peer-python", default="/tmp/peers/bin/python")
    ap.add_argument("--out", default=os.path.join(HERE, "benchmarks", "results", "resnet_step.json"))
    ap.add_argument("--pin", help="run both pinned to this CPU core (taskset), torch with 1 thread")
    ap.add_argument("--same-allocator", action="store_true",
                    help="also run PyTorch with jaxnets' malloc settings (what the allocator alone is worth)")
    ap.add_argument("jax_args", nargs="*", help="extra arguments for benchmarks.resnet_step")
    args = ap.parse_args(argv)
    rounds = []
    for i in range(args.rounds):
        load = os.getloadavg()[0]
        rd = {"load_avg_1min": load, "torch": last_json([args.peer_python, PEER, "--json"], args.pin)}
        if args.same_allocator:
            rd["torch_tuned_allocator"] = last_json([args.peer_python, PEER, "--json"], args.pin, True)
        peer = by_result_name(rd["torch"])
        for v in args.variants:
            rd[v] = last_json([sys.executable, "-m", "benchmarks.resnet_step", "--json", *args.jax_args],
                              args.pin, env_extra=VARIANTS[v])
            rd[f"ratio_{v}"] = ratios_over(rd[v], peer)
        rounds.append(rd)
        print(f"round {i}: load {load:.1f}; " + "; ".join(
            f"{n}: torch {peer[n]['ms_per_step']:.0f} ms, " + ", ".join(
                f"{v} {by_result_name(rd[v])[n]['ms_per_step']:.0f} ms x{rd[f'ratio_{v}'][n]:.2f}"
                for v in args.variants)
            for n in rd[f"ratio_{args.variants[0]}"]), flush=True)
        report = write(args, argv, rounds)
    print(json.dumps({k: report[k] for k in ("benchmark", "device", "results")}))


def write(args, argv, rounds) -> dict:
    """The report over the rounds so far, written to --out (after every round)."""
    names = list(rounds[0][f"ratio_{args.variants[0]}"])
    med = statistics.median
    summary = []
    for n in names:
        s = {"name": n, "torch_ms_per_step": med(by_result_name(rd["torch"])[n]["ms_per_step"] for rd in rounds)}
        for v in args.variants:
            s[f"{v}_ms_per_step"] = med(by_result_name(rd[v])[n]["ms_per_step"] for rd in rounds)
            s[f"ratio_{v}_over_torch"] = med(rd[f"ratio_{v}"][n] for rd in rounds)
        if "default" in args.variants:
            s["ms_per_step"], s["ratio_jaxnets_over_torch"] = s["default_ms_per_step"], s["ratio_default_over_torch"]
            if "xla" in args.variants:   # per round: the native path against XLA's alone
                s["ratio_default_over_xla"] = med(by_result_name(rd["default"])[n]["ms_per_step"]
                                                  / by_result_name(rd["xla"])[n]["ms_per_step"] for rd in rounds)
        summary.append(s)
    report = {"benchmark": "resnet_step_compare", "device": rounds[0][args.variants[0]]["device"],
              "command": "python -m benchmarks.resnet_step_compare " + " ".join(argv or sys.argv[1:]),
              "machine": machine(variants={v: VARIANTS[v] for v in args.variants}), "date": now(),
              "note": "medians over rounds of per-round ratios; each round runs torch then every variant",
              "results": summary, "rounds": rounds}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()

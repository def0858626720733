"""Fixed cost of a run: a one-step MNIST smoke in a new workdir, compilation cache off vs warm.

    python -m benchmarks.startup [--rounds 2] [--out FILE]

Runs `python -m jaxnets.cli train --config experiments/mnist_cnn.py:smoke --config.train.steps=1
--workdir NEW` once to fill the cache, then per round with JAXNETS_COMPILATION_CACHE=0 (cold: every
program compiled) and with the cache on (warm), each in a fresh workdir as a subprocess, and
records wall time, the child's CPU time (user + sys: on a loaded machine the figure to read;
wall then mostly measures waiting for the other jobs) and final.json's time_to_first_step_s and
compile_s. Medians over rounds. Then README's quick start itself, once, warm: the whole smoke
(`mnist_cnn_quickstart`: wall time and held-out accuracy, the figures README quotes).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import ROOT, full_report

CMD = [sys.executable, "-m", "jaxnets.cli", "train", "--config", "experiments/mnist_cnn.py:smoke",
       "--config.train.steps=1"]


def one_run(workdir: str, cache: bool, cmd=CMD) -> dict:
    env = {**os.environ, "JAXNETS_COMPILATION_CACHE": "1" if cache else "0"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([*cmd, "--workdir", workdir], cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    final = json.load(open(os.path.join(workdir, "final.json")))
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "time_to_first_step_s": final["time_to_first_step_s"], "compile_s": final["compile_s"],
            "load": os.getloadavg()[0], "accuracy": final["metrics"].get("eval/accuracy")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    runs = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        one_run(os.path.join(tmp, "prime"), True)
        for i in range(args.rounds):
            for name, cache in (("cold", False), ("warm", True)):
                runs[name].append(one_run(os.path.join(tmp, f"{name}{i}"), cache))
                print(name, runs[name][-1], file=sys.stderr, flush=True)
        quick = one_run(os.path.join(tmp, "quickstart"), True, CMD[:-1])   # all of the smoke's steps
        print("quickstart", quick, file=sys.stderr, flush=True)
    med = statistics.median
    results = [{"name": f"mnist_cnn_smoke_1step_{n}",
                **{k: med(r[k] for r in rs) for k in rs[0] if k not in ("load", "accuracy")},
                "load_min": min(r["load"] for r in rs), "load_max": max(r["load"] for r in rs)}
               for n, rs in runs.items()]
    results.append({"name": "mnist_cnn_quickstart", "wall_s": quick["wall_s"], "cpu_s": quick["cpu_s"],
                    "accuracy": quick["accuracy"], "load_min": quick["load"], "load_max": quick["load"]})
    full_report("startup", argv, results, args.out, runs={**runs, "quickstart": [quick]})


if __name__ == "__main__":
    main()

"""Did a change cost speed? The speed benchmarks at an older commit and at this checkout, side by side.

    python -m benchmarks.before_after --commit ec5a4c4 [--benches transformer resnet lstm startup]
        [--peer-python /tmp/peers/bin/python] [--work DIR] [--save]

Checks out `--commit` into a git worktree under `--work`, then runs each benchmark there and
here in turn (before, after, next benchmark: a shared machine's load drifts less between the
two sides of one row), each with `JAX_PLATFORMS=cpu` so that an installed accelerator plugin
plays no part on either side, and each writing its own full report beside the others in
`--work`. A benchmark whose output file is already in `--work` is not run again (delete it to
redo one). The rows put each side's own figure (ms per step, warm start seconds) and its ratio
to PyTorch measured in the same run next to each other; `after_over_before` < 1 is faster.
The ratios to PyTorch carry the peer's own noise from one run to the next; the jaxnets times
compare the code. `--save` writes benchmarks/results/before_after.json (`benchmarks.report`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import ROOT, report, save

COMMANDS = {   # name: (arguments after `python -m benchmarks.`, output file flag)
    "transformer": ["transformer_step", "--json", "--rounds", "3", "--peer-python", "{peer}", "--out", "{out}"],
    "resnet": ["resnet_step_compare", "--rounds", "3", "--variants", "default", "--peer-python", "{peer}",
               "--out", "{out}"],
    "lstm": ["lstm", "--json", "--cells", "lstm", "--peer", "{peer}", "--out", "{out}"],
    "startup": ["startup", "--rounds", "3", "--out", "{out}"],
}


def run(side_root: str, bench: str, out: str, peer: str) -> None:
    args = [a.format(peer=peer, out=out) for a in COMMANDS[bench]]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with open(out[:-len(".json")] + ".log", "w") as log:
        subprocess.run([sys.executable, "-m", "benchmarks." + args[0], *args[1:]], cwd=side_root,
                       env=env, stdout=log, stderr=subprocess.STDOUT, check=True)


def rows(bench: str, data: dict) -> dict[str, dict[str, float]]:
    """name -> {jaxnets figure, ratio to torch}, from one side's report."""
    out = {}
    for r in data["results"]:
        if bench == "transformer":
            out[f"transformer_{r['name']}"] = {"ms": r["ms_per_step"],
                                               "over_torch": r["ratio_jaxnets_over_torch"]}
        elif bench == "resnet" and "default_ms_per_step" in r:
            out[r["name"]] = {"ms": r["default_ms_per_step"], "over_torch": r["ratio_default_over_torch"]}
        elif bench == "lstm":
            out[f"{r['name']}_fwd_bwd"] = {"ms": r["fwd_bwd_ms"], "over_torch": r.get("fwd_bwd_ratio")}
        elif bench == "startup" and r["name"].startswith("mnist_cnn_smoke_1step"):
            out[f"one_step_start_{r['name'].rsplit('_', 1)[-1]}"] = {"ms": r["wall_s"] * 1e3,
                                                                    "over_torch": None}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--commit", required=True, help="the 'before' commit")
    ap.add_argument("--benches", nargs="+", default=list(COMMANDS), choices=list(COMMANDS))
    ap.add_argument("--peer-python", default="/tmp/peers/bin/python")
    ap.add_argument("--work", default="/tmp/jaxnets_before_after")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/before_after.json")
    args = ap.parse_args(argv)
    tree = os.path.join(args.work, "before")
    if not os.path.isdir(tree):
        os.makedirs(args.work, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "-f", tree, args.commit], cwd=ROOT, check=True)
    sides = {"before": tree, "after": str(ROOT)}
    results = []
    for bench in args.benches:
        got = {}
        for side, root in sides.items():
            out = os.path.join(args.work, f"{side}_{bench}.json")
            if not os.path.exists(out):
                run(root, bench, out, args.peer_python)
            with open(out) as f:
                got[side] = rows(bench, json.load(f))
        for name in got["before"]:
            b, a = got["before"][name], got["after"].get(name)
            if a is None:
                continue
            results.append({"name": name, "before_ms": b["ms"], "after_ms": a["ms"],
                            "after_over_before": a["ms"] / b["ms"],
                            "before_over_torch": b["over_torch"], "after_over_torch": a["over_torch"]})
    command = "python -m benchmarks.before_after " + " ".join(argv if argv is not None else sys.argv[1:])
    line = report("before_after", results, command=command, before_commit=args.commit)
    if args.save:
        save(line, "before_after.json")


if __name__ == "__main__":
    main()

"""`python -m benchmarks.faults [--smoke] [--json]`: every fault case, one JSON line last.

suite.py: kill/resume trials (also during asynchronous saves), corrupt checkpoints, changed data,
non-finite losses, bad input. cluster.py: a launcher killed while its ranks save, concurrent runs
on one workdir, permission errors, a gs:// workdir on a local GCS emulator. Every row reports
trials / survived / digest_mismatch; the command exits 0 when every row survived every trial.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from benchmarks.faults import cluster
from benchmarks.faults.suite import (bad_input, bad_inputs, changed_data, corrupt_checkpoints, final,
                                     kill_resume, nonfinite)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="6 kill/resume trials, one kill each")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--kills", type=int, default=None, help="kills per trial")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="(the last line is always JSON)")
    args = parser.parse_args(argv)
    trials = args.trials or (6 if args.smoke else 20)
    kills = args.kills or (1 if args.smoke else 3)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="jaxnets_faults_") as root:
        results = kill_resume(root, trials, kills, args.seed)
        digest = final(os.path.join(root, "reference"))["param_digest"]
        results += [corrupt_checkpoints(root, digest), changed_data(root), nonfinite(root)]
        results += [cluster.launcher_kill_during_save(root, 1 if args.smoke else 4),
                    cluster.concurrent_runs(root, digest), cluster.permission_error(root, digest),
                    cluster.cloud_workdir(root)]
        cases = [bad_input(root, name, *case) for name, case in bad_inputs(os.path.join(root, "inputs")).items()]
        results.append({"name": "bad_input", "trials": len(cases), "survived": sum(c["ok"] for c in cases),
                        "digest_mismatch": 0, "max_seconds": max(c["seconds"] for c in cases),
                        "over_30s": [c["case"] for c in cases if c["seconds"] >= 30],
                        "failed": [c for c in cases if not c["ok"]]})
    for r in results:
        print(f"{r['name']:24s} {r['survived']}/{r['trials']} survived, "
              f"digest_mismatch {r['digest_mismatch']}", file=sys.stderr)
    print(json.dumps({"benchmark": "faults", "device": "cpu", "seconds": round(time.time() - t0),
                      "results": results}))
    return 0 if all(r["survived"] == r["trials"] and not r["digest_mismatch"] for r in results) else 1



"""The native 3x3 filter-gradient kernel, each ISA build against XLA's form, per ResNet layer.

    python -m benchmarks.conv_filter_grad [--batch 64] [--rounds 7] [--repeats 5] [--peer-python PY] [--out FILE]

For the CIFAR ResNet's three 3x3 layer shapes (32x32x16, 16x16x32, 8x8x64; batch 64, the
per-device share of batch 128 on two per-core devices), times every native build this CPU can
run (`jaxnets.kernels.native.runnable_isas`: avx512, avx2, portable) and XLA's filter gradient,
interleaved in rounds (each build `--repeats` calls back to back per round, their median the
round's figure, as the peer times its calls), each call on one thread (threads=1, as on
per-core devices; XLA with `--xla_cpu_multi_thread_eigen=false`). Reports the median ms per
build and its ratio to XLA (below 1: the kernel wins), and GFLOP/s, from the process's CPU time
per call (`*_cpu_ms`, the figures to read on a loaded machine: a call longer than the
scheduler's time slice waits for every other job in wall time, a shorter one does not) and
from wall time. This is where a build's register tiles show: `JAXNETS_NATIVE_ISA` picks the
build `jaxnets train` uses; the on-disk choice cache picks XLA for any shape where it is faster.

The PyTorch peer (`benchmarks/peers/torch_conv_filter_grad.py`, run by `--peer-python`, default
the peers venv /tmp/peers; skipped if that python does not exist): oneDNN's weight-gradient
primitive on one thread, channels_last, one subprocess per round before jaxnets' calls (the
median of 5 calls after 2 warm-up calls). Its `torch_cpu_ms`, GFLOP/s and fraction of one core's
peak sit in the same row, and `native_over_torch` is the ratio for the build this machine runs
(`native_isa`), per round then the median. GFLOP/s count every product of the zero-padded 3x3 window (2 B H W 9 C O), whichever
side skips the borders' zeros.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = [(32, 32, 16, 16), (16, 16, 32, 32), (8, 8, 64, 64)]
PEER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers",
                    "torch_conv_filter_grad.py")


def shape_name(h, w, c, o) -> str:
    return f"{h}x{w}x{c}->{o}"


def peer_round(peer_python: str, batch: int) -> dict[str, float]:
    """One run of the PyTorch peer: {shape name: median CPU ms per call}."""
    cmd = [peer_python, PEER, "--json"] + [a for h, w, c, o in SHAPES for a in (
        "--shape", f"{shape_name(h, w, c, o)}={batch},{h},{w},{c},{o}")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {r["name"]: r["cpu_ms"] for r in json.loads(out.strip().splitlines()[-1])["results"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=5,
                    help="calls of each build per round, back to back (their median is the round's)")
    ap.add_argument("--peer-python", default="/tmp/peers/bin/python",
                    help="python of the PyTorch peers venv (the peer is skipped if it does not exist)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.common import machine, now
    from benchmarks.peak import cpu_peak
    from jaxnets.kernels import conv_filter_grad, native

    isas = native.runnable_isas()
    has_peer = bool(args.peer_python) and os.path.exists(args.peer_python)
    calls = {}
    for h, w, c, o in SHAPES:
        shape = shape_name(h, w, c, o)
        x = jax.random.normal(jax.random.key(0), (args.batch, h, w, c))
        g = jax.random.normal(jax.random.key(1), (args.batch, h, w, o))
        out = jax.ShapeDtypeStruct((3, 3, c, o), jnp.float32)
        for isa in isas:
            target = native.ffi_target(conv_filter_grad.NAME, "Conv3x3FilterGrad", isa)
            f = jax.jit(lambda x, g, t=target, out=out: jax.ffi.ffi_call(t, out)(
                x, g, threads=np.int64(1), stride=np.int64(1)))
            calls[(shape, isa)] = (f, x, g)
        calls[(shape, "xla")] = (jax.jit(conv_filter_grad.reference), x, g)
    for f, x, g in calls.values():
        f(x, g).block_until_ready()
    times = {k: [] for k in calls}
    cpu = {k: [] for k in calls}
    peer = {shape_name(*s): [] for s in SHAPES}
    for _ in range(args.rounds):
        if has_peer:
            for name, ms in peer_round(args.peer_python, args.batch).items():
                peer[name].append(ms)
        for k, (f, x, g) in calls.items():
            wall_ms, cpu_ms = [], []
            for _ in range(args.repeats):   # back to back, as the peer times its calls
                t, c = time.perf_counter(), time.process_time()
                f(x, g).block_until_ready()
                wall_ms.append((time.perf_counter() - t) * 1e3)
                cpu_ms.append((time.process_time() - c) * 1e3)
            times[k].append(statistics.median(wall_ms))
            cpu[k].append(statistics.median(cpu_ms))
    core_peak = cpu_peak()["fp32_flops_per_s"] / cpu_peak()["cores"]
    ours = native.machine_isa()
    results = []
    for h, w, c, o in SHAPES:
        shape = shape_name(h, w, c, o)
        flops = 2 * args.batch * h * w * 9 * c * o
        med = statistics.median
        xla, xla_cpu = med(times[(shape, "xla")]), med(cpu[(shape, "xla")])
        row = {"name": shape, "batch": args.batch, "xla_cpu_ms": xla_cpu}
        for isa in isas:
            ms = med(cpu[(shape, isa)])
            row[f"{isa}_cpu_ms"] = ms
            row[f"{isa}_over_xla"] = ms / xla_cpu
            row[f"{isa}_gflops"] = flops / ms / 1e6
            # CPU time of one thread: against one core's share of the machine's peak.
            row[f"{isa}_fraction_of_core_peak"] = round(flops / ms * 1e3 / core_peak, 4)
        if has_peer:
            theirs = med(peer[shape])
            row.update({"torch_cpu_ms": theirs, "torch_gflops": flops / theirs / 1e6,
                        "torch_fraction_of_core_peak": round(flops / theirs * 1e3 / core_peak, 4)})
            if ours in isas:
                row["native_isa"] = ours
                row["native_over_torch"] = round(med(a / b for a, b in zip(cpu[(shape, ours)], peer[shape])), 3)
        row["xla_wall_ms"] = xla
        for isa in isas:
            row[f"{isa}_wall_ms"] = med(times[(shape, isa)])
        results.append(row)
        print(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              file=sys.stderr)
    report = {"benchmark": "conv_filter_grad",
              "command": "python -m benchmarks.conv_filter_grad " + " ".join(argv or sys.argv[1:]),
              "machine": machine(), "date": now(), "results": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

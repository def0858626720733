"""The native 3x3 filter-gradient kernel, each ISA build against XLA's form, per ResNet layer.

    python -m benchmarks.conv_filter_grad [--batch 64] [--rounds 7] [--out FILE]

For the CIFAR ResNet's three 3x3 layer shapes (32x32x16, 16x16x32, 8x8x64; batch 64, the
per-device share of batch 128 on two per-core devices), times every native build this CPU can
run (`jaxnets.kernels.native.runnable_isas`: avx512, avx2, portable) and XLA's filter
gradient, interleaved in rounds, each call on one thread (threads=1, as on per-core devices;
XLA with `--xla_cpu_multi_thread_eigen=false`). Reports the median ms per build and its ratio
to XLA (below 1: the kernel wins), and GFLOP/s, from the process's CPU time per call
(`*_cpu_ms`, the figures to read on a loaded machine: a call longer than the scheduler's time
slice waits for every other job in wall time, a shorter one does not) and from wall time. This is where a build's register tiles show:
`JAXNETS_NATIVE_ISA` picks the build `jaxnets train` uses; the on-disk choice cache picks XLA
for any shape where it is faster.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

SHAPES = [(32, 32, 16, 16), (16, 16, 32, 32), (8, 8, 64, 64)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
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
    calls = {}
    for h, w, c, o in SHAPES:
        shape = f"{h}x{w}x{c}->{o}"
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
    for _ in range(args.rounds):
        for k, (f, x, g) in calls.items():
            t, c = time.perf_counter(), time.process_time()
            f(x, g).block_until_ready()
            times[k].append((time.perf_counter() - t) * 1e3)
            cpu[k].append((time.process_time() - c) * 1e3)
    results = []
    for h, w, c, o in SHAPES:
        shape = f"{h}x{w}x{c}->{o}"
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
            row[f"{isa}_fraction_of_core_peak"] = round(flops / ms * 1e3 / (cpu_peak()["fp32_flops_per_s"] / cpu_peak()["cores"]), 4)
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

"""LayerNorm forward+backward: the native kernels, each ISA build, against XLA's form (nnx.LayerNorm).

    python -m benchmarks.layer_norm [--rounds 7] [--out FILE]

At the Transformer LM's activation shapes (`benchmarks.transformer_step` smoke [32, 128, 128],
large [16, 256, 384]), on JAX's one CPU device with its intra-op pool (the LM's layout, the
kernels' threads=0), every native build this CPU can run (`jaxnets.kernels.native.runnable_isas`)
and XLA's LayerNorm are timed in interleaved rounds: the forward, and the VJP of all three
inputs given an output gradient. Reports the median ms of each and its ratio to XLA (below 1:
the kernel wins); `Lowering.layer_norm` takes the kernel on every build.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

SHAPES = {"smoke": (32, 128, 128), "large": (16, 256, 384)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    from jaxnets.platform.allocator import tune_host_allocator
    tune_host_allocator()   # as `jaxnets train` does: freed buffers reused, not faulted in again
    import jax
    from flax import nnx

    from benchmarks.common import full_report
    from jaxnets.kernels import layer_norm, native

    def fwd_bwd(fn):
        def f(x, scale, bias, dy):
            y, vjp = jax.vjp(fn, x, scale, bias)
            return y, vjp(dy)
        return jax.jit(f)

    isas = native.runnable_isas()
    calls = {}
    for name, shape in SHAPES.items():
        keys = jax.random.split(jax.random.key(0), 4)
        x, dy = jax.random.normal(keys[0], shape), jax.random.normal(keys[1], shape)
        d = shape[-1]
        scale, bias = 1 + 0.1 * jax.random.normal(keys[2], (d,)), 0.1 * jax.random.normal(keys[3], (d,))
        graph = nnx.split(nnx.LayerNorm(d, rngs=nnx.Rngs(0)))[0]
        xla = lambda x, s, b, graph=graph: nnx.merge(graph, nnx.State(   # noqa: E731
            {"scale": nnx.Param(s), "bias": nnx.Param(b)}))(x)
        calls[name, "xla"] = (fwd_bwd(xla), (x, scale, bias, dy))
        for isa in isas:
            native_fn = lambda x, s, b, isa=isa: layer_norm.layer_norm(   # noqa: E731
                x, s, b, eps=1e-6, threads=0, isa=isa)
            calls[name, isa] = (fwd_bwd(native_fn), (x, scale, bias, dy))
    for f, a in calls.values():
        jax.block_until_ready(f(*a))
    times = {k: [] for k in calls}
    for _ in range(args.rounds):
        for k, (f, a) in calls.items():
            t = time.perf_counter()
            for _ in range(args.iters):
                jax.block_until_ready(f(*a))
            times[k].append((time.perf_counter() - t) * 1e3 / args.iters)
    results = []
    for name, shape in SHAPES.items():
        xla = statistics.median(times[name, "xla"])
        row = {"name": name, "shape": "x".join(map(str, shape)), "xla_ms": xla}
        for isa in isas:
            row[f"{isa}_ms"] = statistics.median(times[name, isa])
            row[f"{isa}_over_xla"] = row[f"{isa}_ms"] / xla
        results.append(row)
        print(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              file=sys.stderr)
    full_report("layer_norm", argv, results, args.out)


if __name__ == "__main__":
    main()

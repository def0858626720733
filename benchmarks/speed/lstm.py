"""LSTM/GRU layer speed on CPU: forward and forward+backward of the layer users get.

    python -m benchmarks.lstm --json                                  # jaxnets alone
    python -m benchmarks.lstm --json --peer /tmp/peers/bin/python --repeats 3   # side by side

With `--peer`, the PyTorch peers (`../shared/peers/torch_lstm.py` and
`benchmarks/peers/torch_gru.py`, run as subprocesses in their own venv) and
jaxnets are timed in turns, `--repeats` rounds, so that load on the shared machine hits
both alike; each figure is the median over rounds and `*_ratio` = jaxnets / PyTorch.

Work timed (same as the PyTorch peer): `y, _ = layer(x)` with x [B, T, D] batch-first, and
`grad(mean(y**2))` with respect to the parameters (not x, as in the peer). Results are named
`{lstm,gru}_b{B}_t{T}_d{D}_h{H}` with `fwd_ms` and `fwd_bwd_ms` (medians).

With `--peer`, PyTorch runs twice per round: with glibc's default malloc (the issue's
baseline) and with the malloc settings jaxnets applies to itself
(`jaxnets.platform.allocator.tune_host_allocator`), giving `*_ratio` and `*_ratio_same_alloc`.

Design (what the layer does to be fast; `jaxnets.nn.recurrent_scan`), in the order it mattered,
single-threaded, b64 t128 d256 h256 forward+backward, 2026-11-28:
1. XLA computed the input projection's weight gradient dW_x with both operands transposed,
   outside its fast matmul library: 67 ms of a 190 ms step. `project` has its own VJP
   (dW_x = X^T dXP with the narrow X transposed); dW_h likewise: 190 -> 131 ms.
2. The gate maths compiled to scalar code: XLA fused each step's dynamic-slice of the
   projection into the pointwise fusion and reloaded the slice index per element (no
   vector instructions in the object code). `_contiguous_scan` passes each step's slices
   through the loop carry, fetched ahead: the gate fusion went 9.3 -> 1.5 ms (forward
   65 -> 50 ms). Fetching 4 steps per iteration trims loop overhead (T=1024: 31.7 -> 28.6).
3. Page faults: glibc serves >= 32 MiB buffers (and XLA worker-thread arenas) with fresh
   mmaps, so every call faulted its projection and residual stacks in again (22,000 faults
   per forward). `tune_host_allocator` (one arena, no mmap, high trim threshold): forward
   57 -> 37 ms, forward+backward 157 -> 118 ms on 2 threads. PyTorch gains from the same
   settings too (its forward+backward 118 -> 70 ms), hence the same-malloc column.
4. The bias is added inside the step (fused into the gates) instead of in a separate pass
   over the [T, B, 4H] projection; additive cells save one pre-activation stack instead of
   the projection and the recurrent term.
5. Session 12: the whole loop in a native kernel on CPU (`jaxnets/kernels/lstm_recurrence.cc`,
   `gru_recurrence.cc`): XLA ran each step as a handful of thunks (matmul, gate fusion, carry
   copies), about half of each step. `--variant xla_loop` times the XLA loop it replaced; each
   row records which ran (`recurrence`) and the kernel's threads (`threads_native`, from the
   platform's lowering, as experiments build the layer).
Also measured: the hand-written backward (dW_h as one matmul after the loop) vs autodiff of
`lax.scan` (`--variant autodiff`); unroll 2/4 no change, 8/16 slower backward; XLA flags
(xnnpack, onednn, fusion emitters off) no clear change.

Results: `--out benchmarks/results/lstm.json`, tabulated with the machine it ran on in
benchmarks/results/README.md by `python -m benchmarks.report`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from benchmarks.common import peer_script  # noqa: E402
from benchmarks.peak import efficiency  # noqa: E402

SHAPES = [(64, 128, 256, 256), (16, 1024, 128, 128)]


def setup_threads(threads):
    """Pin both sides to `threads` threads (before jax is imported): on a machine shared with
    other jobs, oversubscribed thread pools (PyTorch's OpenMP threads spin-wait) distort
    the comparison; one thread each compares the code paths alone."""
    if threads:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                                   + ("false" if threads == 1 else "true")).strip()
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
    global jax, jnp, nnx, recurrent, recurrent_scan, runtime, lowering_for
    from jaxnets.platform import allocator as runtime
    runtime.tune_host_allocator()   # as `jaxnets train` does
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxnets.nn import recurrent, recurrent_scan
    from jaxnets.platform.lowering_rule import lowering_for


def bench(fn, warm=3, n=15):
    for _ in range(warm):
        jax.block_until_ready(fn())
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def autodiff_scan(pointwise, unroll, reverse, w_h, extras, b, xp, mask, carry0, **_):
    """The XLA loop without the hand-written backward (autodiff of lax.scan)."""
    ys, carry, _ = recurrent_scan._scan_forward(pointwise, unroll, reverse, w_h, extras, b, xp, mask, carry0, False)
    return ys, carry


def xla_loop_scan(pointwise, unroll, reverse, w_h, extras, b, xp, mask, carry0, **_):
    """The XLA loop with the hand-written backward, where the layer would take a native kernel."""
    return recurrent_scan._xla_scan(pointwise, unroll, reverse, w_h, extras, b, xp, mask, carry0)


def run(kind, B, T, D, H, unroll, variant, n):
    layer_cls = {"lstm": recurrent.LSTM, "gru": recurrent.GRU}[kind]
    # Built as experiments build it: with the platform's lowering (the native kernels' threads).
    layer = layer_cls(D, H, rngs=nnx.Rngs(0), unroll=unroll, lowering=lowering_for())
    graphdef, params = nnx.split(layer)
    x = jax.random.normal(jax.random.key(0), (B, T, D), jnp.float32)
    scan = {"custom_vjp": recurrent.recurrent_scan, "xla_loop": xla_loop_scan,
            "autodiff": autodiff_scan}[variant]

    def forward(params, x):
        saved, recurrent.recurrent_scan = recurrent.recurrent_scan, scan   # trace-time switch only
        try:
            return nnx.merge(graphdef, params)(x)[0]
        finally:
            recurrent.recurrent_scan = saved

    fwd = jax.jit(forward)
    fwd_bwd = jax.jit(jax.grad(lambda p, x: jnp.mean(jnp.square(forward(p, x)))))
    gates = {"lstm": 4, "gru": 3}[kind]
    native = f"jaxnets_{kind}_recurrence" in fwd_bwd.lower(params, x).as_text()
    return {"name": f"{kind}_b{B}_t{T}_d{D}_h{H}",
            "recurrence": "native" if native else "xla_loop",
            # The gate matmuls (input and recurrent) of every step; the backward pass is counted
            # as twice the forward (one product for the input gradient, one for the weights').
            "fwd_flops": 2.0 * B * T * (D + H) * gates * H,
            "fwd_ms": bench(lambda: fwd(params, x), n=n),
            "fwd_bwd_ms": bench(lambda: fwd_bwd(params, x), n=n),
            "unroll": unroll, "variant": variant, "threads_native": layer.native_threads}


PEERS_HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers")
PEERS = [peer_script("torch_lstm.py"), os.path.join(PEERS_HERE, "torch_gru.py")]


def run_peers(python, cells, tuned_allocator=False):
    """Figures from the PyTorch peers, by result name (default glibc malloc, or the tuned one)."""
    out = {}
    env = dict(os.environ)
    if tuned_allocator:
        env["GLIBC_TUNABLES"] = runtime.GLIBC_TUNABLES
    for script, kind in zip(PEERS, ["lstm", "gru"]):
        if kind in cells:
            last = subprocess.run([python, script, "--json"], check=True, capture_output=True,
                                  text=True, env=env).stdout.strip().splitlines()[-1]
            out.update({r["name"]: r for r in json.loads(last)["results"]})
            out["device"] = json.loads(last)["device"]
    return out


def median_of(rounds, key):
    return statistics.median(r[key] for r in rounds)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--unroll", type=int, default=None, help="default: the layer's default")
    ap.add_argument("--variant", default="custom_vjp", choices=["custom_vjp", "xla_loop", "autodiff"],
                    help="custom_vjp: the layer as users get it (the native LSTM recurrence on CPU); "
                         "xla_loop: the XLA loop with the hand-written backward; autodiff: of lax.scan")
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--peer", default=None, help="python of the PyTorch venv, e.g. /tmp/peers/bin/python")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="1: single-threaded XLA and PyTorch")
    ap.add_argument("--out", help="also write the report (with machine and date) to this file")
    args = ap.parse_args()
    setup_threads(args.threads)
    unroll = args.unroll if args.unroll is not None else recurrent.DEFAULT_UNROLL
    cells = args.cells.split(",")
    ours, theirs, theirs_tuned, peer_device = {}, {}, {}, None
    for _ in range(args.repeats):
        if args.peer:
            for tuned, store in ((False, theirs), (True, theirs_tuned)):
                peer = run_peers(args.peer, cells, tuned)
                peer_device = peer.pop("device")
                for name, r in peer.items():
                    store.setdefault(name, []).append(r)
        for kind in cells:
            for shape in SHAPES:
                r = run(kind, *shape, unroll, args.variant, args.n)
                ours.setdefault(r["name"], []).append(r)
    results = []
    for name, rounds in ours.items():
        r = {"name": name, "fwd_ms": median_of(rounds, "fwd_ms"),
             "fwd_bwd_ms": median_of(rounds, "fwd_bwd_ms"), "unroll": unroll, "variant": args.variant,
             "recurrence": rounds[0]["recurrence"], "threads_native": rounds[0]["threads_native"]}
        flops = {"fwd_ms": rounds[0]["fwd_flops"], "fwd_bwd_ms": 3 * rounds[0]["fwd_flops"]}
        for key in ["fwd_ms", "fwd_bwd_ms"]:
            r.update(efficiency(flops[key], r[key], prefix=key.replace("ms", "")))
        if name in theirs:
            for key in ["fwd_ms", "fwd_bwd_ms"]:
                r["torch_" + key] = median_of(theirs[name], key)
                r[key.replace("_ms", "_ratio")] = r[key] / r["torch_" + key]
                # PyTorch given the same malloc settings as jaxnets (it gains too).
                r["torch_tuned_alloc_" + key] = median_of(theirs_tuned[name], key)
                r[key.replace("_ms", "_ratio_same_alloc")] = r[key] / r["torch_tuned_alloc_" + key]
                r.update(efficiency(flops[key], r["torch_" + key], prefix="torch_" + key.replace("ms", "")))
        results.append(r)
    out = {"benchmark": "lstm",
           "device": f"cpu jax {jax.__version__} devices={jax.device_count()} {platform.machine()}"
                     f" cores={os.cpu_count()}" + (f"; peer: {peer_device}" if peer_device else ""),
           "repeats": args.repeats, "threads": args.threads or "default",
           "host_allocator": runtime.host_allocator_state(), "results": results}
    from benchmarks.common import machine, now
    out.update(machine=machine(), date=now(), command="python -m benchmarks.lstm " + " ".join(sys.argv[1:]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    if not args.json:
        for r in results:
            line = f"{r['name']}: fwd {r['fwd_ms']:.1f} ms, fwd+bwd {r['fwd_bwd_ms']:.1f} ms"
            if "fwd_ratio" in r:
                line += (f" | torch fwd {r['torch_fwd_ms']:.1f}, fwd+bwd {r['torch_fwd_bwd_ms']:.1f}"
                         f" | ratio fwd {r['fwd_ratio']:.2f}, fwd+bwd {r['fwd_bwd_ratio']:.2f}"
                         f" | same malloc: torch {r['torch_tuned_alloc_fwd_ms']:.1f} /"
                         f" {r['torch_tuned_alloc_fwd_bwd_ms']:.1f}, ratio {r['fwd_ratio_same_alloc']:.2f}"
                         f" / {r['fwd_bwd_ratio_same_alloc']:.2f}")
            print(line)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Did a change to a native CPU kernel's source pay? Its build at a git revision against the working
tree's, in one process, rounds alternating.

    python -m benchmarks.native_sources --rev 5f092a4 [--isa avx512 avx2 portable] [--rounds 4]
        [--kernels causal_attention conv3x3_forward conv3x3_filter_grad dense_weight_grad
                   lstm_recurrence gru_recurrence]
        [--json]
        [--out FILE]

Both sources (the kernel's .cc and the shared headers beside it, as of `--rev` and as checked
out) are built for each `--isa` (default: this machine's, `jaxnets.kernels.native.machine_isa`) under
distinct FFI target names and timed on the same operands at the benchmark shapes (attention: the
Transformer-LM's `CAUSAL_SHAPES`; filter gradient: ResNet's three stages at batch 64; dense
weight gradient: the large Transformer LM's (4096 rows; on XLA's intra-op pool); LSTM and
GRU: the `benchmarks.lstm` shapes), before and after in turn, each its median over `--rounds` rounds of
medians; the outputs are compared too. Rows `{kernel}_{shape}_{pass}_{isa}` with `before_ms`,
`after_ms` and `after_over_before` (< 1: the change is faster). Step-level effects: the speed
benchmarks themselves, or `benchmarks.before_after` across commits.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, machine, now, time_fn

KERNELS = ("causal_attention", "conv3x3_forward", "conv3x3_filter_grad", "dense_weight_grad",
           "lstm_recurrence", "gru_recurrence")


def sources_at(rev: str, kernel: str) -> Path | None:
    """The kernel's .cc and every header of jaxnets/kernels at `rev`, in a temporary folder
    (None if the kernel did not exist then)."""
    folder = Path(tempfile.mkdtemp(prefix=f"native-{rev}-"))
    listing = subprocess.run(["git", "ls-tree", "--name-only", rev, "jaxnets/kernels/"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    wanted = [p for p in listing if p.endswith(".h") or p == f"jaxnets/kernels/{kernel}.cc"]
    if f"jaxnets/kernels/{kernel}.cc" not in wanted:
        return None
    for path in wanted:
        (folder / Path(path).name).write_bytes(
            subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, check=True).stdout)
    return folder


def register(native, folder: Path, kernel: str, isa: str, tag: str, symbols) -> dict:
    """{symbol: FFI target name} of this build, and "_attrs": the attribute names its handlers
    declare (a kernel that gained one, as the filter gradient's stride, is called with it)."""
    source = folder / f"{kernel}.cc"
    lib = ctypes.cdll.LoadLibrary(str(native._build(f"{kernel}-{tag}", source, native._compiler(), isa)))
    import jax
    names = {"_attrs": set(re.findall(r'Attr<[^>]*>\("(\w+)"\)', source.read_text()))}
    for symbol in symbols:
        names[symbol] = f"jaxnets_ab_{kernel}_{symbol}_{tag}_{isa}"
        jax.ffi.register_ffi_target(names[symbol], jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return names


def cases(kernel: str):
    """(shape name, symbols, build(targets) -> {pass: zero-argument function})."""
    import jax
    import jax.numpy as jnp
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)   # noqa: E731
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)   # noqa: E731
    if kernel == "causal_attention":
        from benchmarks.speed.attention import CAUSAL_SHAPES
        for name, (b, t, h, d) in CAUSAL_SHAPES.items():
            q, k, v, do = (normal(b, t, h, d) for _ in range(4))
            attrs = dict(scale=np.float32(d ** -0.5), threads=np.int64(0))

            def build(tg, q=q, k=k, v=v, do=do, b=b, t=t, h=h, attrs=attrs):
                fwd = jax.jit(lambda q, k, v: jax.ffi.ffi_call(
                    tg["CausalAttentionFwd"], (f32(*q.shape), f32(b, h, t)))(q, k, v, **attrs))
                o, lse = fwd(q, k, v)
                bwd = jax.jit(lambda *a: jax.ffi.ffi_call(
                    tg["CausalAttentionBwd"], tuple(f32(*x.shape) for x in (q, k, v)))(*a, **attrs))
                return {"fwd": lambda: fwd(q, k, v), "bwd": lambda: bwd(q, k, v, o, lse, do)}
            yield name, ("CausalAttentionFwd", "CausalAttentionBwd"), build
    elif kernel == "conv3x3_forward":
        for hw, c in ((32, 16), (16, 32), (8, 64)):
            x, k = normal(64, hw, hw, c), normal(3, 3, c, c)

            def build(tg, x=x, k=k, hw=hw, c=c):
                stride = {"stride": np.int64(1)} if "stride" in tg["_attrs"] else {}
                f = jax.jit(lambda x, k: jax.ffi.ffi_call(tg["Conv3x3Forward"], f32(64, hw, hw, c))(
                    x, k, threads=np.int64(1), **stride))
                return {"y": lambda: f(x, k)}
            yield f"b64_{hw}x{hw}x{c}", ("Conv3x3Forward",), build
    elif kernel == "conv3x3_filter_grad":
        for hw, c in ((32, 16), (16, 32), (8, 64)):
            x, g = normal(64, hw, hw, c), normal(64, hw, hw, c)

            def build(tg, x=x, g=g, c=c):
                stride = {"stride": np.int64(1)} if "stride" in tg["_attrs"] else {}
                f = jax.jit(lambda x, g: jax.ffi.ffi_call(tg["Conv3x3FilterGrad"], f32(3, 3, c, c))(
                    x, g, threads=np.int64(1), **stride))
                return {"dw": lambda: f(x, g)}
            yield f"b64_{hw}x{hw}x{c}", ("Conv3x3FilterGrad",), build
    elif kernel == "dense_weight_grad":
        # The large LM's (16 x 256 rows) weight gradients as the kernel gets them: the
        # feed-forward's two (the wider one transposed), attention's output projection and its
        # q/k/v projection (transposed).
        for k, n in ((1536, 384), (384, 384), (1152, 384)):
            x, g = normal(4096, k), normal(4096, n)

            def build(tg, x=x, g=g, k=k, n=n):
                f = jax.jit(lambda x, g: jax.ffi.ffi_call(tg["DenseWeightGrad"], f32(k, n))(
                    x, g, threads=np.int64(0)))
                return {"dw": lambda: f(x, g)}
            yield f"4096x{k}x{n}", ("DenseWeightGrad",), build
    elif kernel == "lstm_recurrence":
        from benchmarks.speed.lstm import SHAPES
        for b, t, _, h in SHAPES:
            w, bias, xp = normal(h, 4 * h) * 0.05, jnp.zeros(4 * h), normal(t, b, 4 * h)
            h0, mask, dys = jnp.zeros((b, h)), jnp.ones((t, b)), normal(t, b, h)
            attrs = dict(reverse=False, threads=np.int64(0))

            def build(tg, w=w, bias=bias, xp=xp, h0=h0, mask=mask, dys=dys, t=t, b=b, h=h, attrs=attrs):
                fwd = jax.jit(lambda *a: jax.ffi.ffi_call(tg["LstmForward"], (
                    f32(t, b, h), f32(b, h), f32(b, h), f32(t, b, 4 * h), f32(t, b, h), f32(t, b, h)))(
                    *a, **attrs))
                outs = fwd(xp, bias, w, h0, h0, mask)
                bwd = jax.jit(lambda *a: jax.ffi.ffi_call(tg["LstmBackward"], (
                    f32(t, b, 4 * h), f32(b, h), f32(b, h)))(*a, **attrs))
                args = (w, outs[3], outs[4], h0, mask, dys, h0, h0)
                return {"fwd": lambda: fwd(xp, bias, w, h0, h0, mask), "bwd": lambda: bwd(*args)}
            yield f"b{b}_t{t}_h{h}", ("LstmForward", "LstmBackward"), build
    elif kernel == "gru_recurrence":
        from benchmarks.speed.lstm import SHAPES
        for b, t, _, h in SHAPES:
            w, bias, xp = normal(h, 3 * h) * 0.05, jnp.zeros(3 * h), normal(t, b, 3 * h)
            b_hn, h0, mask, dys = jnp.zeros(h), jnp.zeros((b, h)), jnp.ones((t, b)), normal(t, b, h)
            attrs = dict(reverse=False, threads=np.int64(0))

            def build(tg, w=w, bias=bias, b_hn=b_hn, xp=xp, h0=h0, mask=mask, dys=dys, t=t, b=b, h=h,
                      attrs=attrs):
                fwd = jax.jit(lambda *a: jax.ffi.ffi_call(tg["GruForward"], (
                    f32(t, b, h), f32(b, h), f32(t, b, 4 * h), f32(t, b, h)))(*a, **attrs))
                outs = fwd(xp, bias, b_hn, w, h0, mask)
                bwd = jax.jit(lambda *a: jax.ffi.ffi_call(tg["GruBackward"], (
                    f32(t, b, 3 * h), f32(t, b, 3 * h), f32(b, h)))(*a, **attrs))
                args = (w, outs[2], outs[3], mask, dys, h0)
                return {"fwd": lambda: fwd(xp, bias, b_hn, w, h0, mask), "bwd": lambda: bwd(*args)}
            yield f"b{b}_t{t}_h{h}", ("GruForward", "GruBackward"), build


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", required=True, help="git revision of the 'before' sources")
    ap.add_argument("--isa", nargs="+", default=None, help="builds to compare (default: this machine's)")
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    import jax
    from jaxnets.kernels import native
    from jaxnets.platform.allocator import tune_host_allocator
    tune_host_allocator()
    isas = args.isa or [native.machine_isa()]
    if native._compiler() is None:
        sys.exit("no C++ compiler: nothing to build")
    unknown = [i for i in isas if i not in native.runnable_isas()]
    if unknown:
        sys.exit(f"this CPU cannot run the {unknown} build(s); it runs {native.runnable_isas()}")
    rows = []
    for isa, kernel in ((i, k) for i in isas for k in args.kernels):
        before_dir = sources_at(args.rev, kernel)
        if before_dir is None:
            print(f"{kernel}: not in {args.rev}, skipped", file=sys.stderr)
            continue
        for name, symbols, build in cases(kernel):
            fns = {tag: build(register(native, folder, kernel, isa, tag, symbols))
                   for tag, folder in (("before", before_dir), ("after", native.HERE))}
            for pass_ in fns["after"]:
                got = [jax.tree.leaves(fns[tag][pass_]()) for tag in ("before", "after")]
                same = all(np.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(*got))
                times = {tag: [] for tag in fns}
                for _ in range(args.rounds):
                    for tag in fns:
                        fn = fns[tag][pass_]
                        times[tag].append(time_fn(lambda: jax.block_until_ready(fn()), runs=15)["median_ms"])
                before, after = (statistics.median(times[tag]) for tag in ("before", "after"))
                rows.append({"name": f"{kernel}_{name}_{pass_}_{isa}", "isa": isa, "before_ms": before,
                             "after_ms": after, "after_over_before": after / before,
                             "same_outputs": bool(same)})
                print(f"{rows[-1]['name']}: {before:.3f} -> {after:.3f} ms "
                      f"({after / before:.3f}x){'' if same else ', OUTPUTS DIFFER'}", file=sys.stderr)
    out = {"benchmark": "native_sources", "rev": args.rev, "results": rows, "machine": machine(),
           "date": now(), "command": "python -m benchmarks.native_sources " + " ".join(sys.argv[1:])}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

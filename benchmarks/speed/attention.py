"""Attention implementations side by side: time, TFLOP/s, peak memory, correctness.

    python -m benchmarks.attention --json                  # CPU or GPU section, by backend
    python -m benchmarks.attention --json --tiny           # GPU section at toy sizes (CPU check)
    python -m benchmarks.attention --rss-child blockwise 16384   # internal: one fresh process

CPU: `blockwise` vs `xla` at B=4, H=8, D=64, T=2048 (forward, forward+backward), and the peak
resident memory of blockwise forward+backward at B=1, H=8, D=64, T=16384 in a fresh process
(`blockwise_t16384`, `peak_rss_mib`; the xla path would need 8 GiB for the logits alone).
Then causal self-attention at the Transformer-LM benchmark's shapes (`CAUSAL_SHAPES`:
benchmarks.transformer_step's smoke and large models) by the native kernel (`implementation=
"native"`, this machine's build; `JAXNETS_NATIVE_ISA=avx2|portable` forces another) and by XLA's
formula (`"xla"`), side by side with PyTorch's fused CPU kernel
(F.scaled_dot_product_attention, `benchmarks/peers/torch_attention.py` in the peers venv given
by `--peer-python`; skipped if that python does not exist): `--rounds` rounds, the peer then
jaxnets in each; rows `causal_{shape}_{impl}_{pass}` with both sides' ms, GFLOP/s and
fraction_of_peak and `ratio_jaxnets_over_torch` (median of the per-round ratios).
GPU: TFLOP/s of `pallas` vs `cudnn` vs `xla` (and the upstream Pallas reference kernel) in
bf16, forward and forward+backward, causal or not, D = 64 and 128, T = 1k..16k at 16k tokens
per batch, after checking each against float32 `xla` on the same inputs. FLOPs counted as
4 B H Tq Tk D forward (halved when causal) and 2.5x that for the backward.
Timings are medians after a compile/warm-up call; on a shared CPU compare ratios within a run.
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from jaxnets.nn.attention import dot_product_attention
from benchmarks.common import machine, now
from benchmarks.peak import efficiency


def median_seconds(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_fns(impl, causal, **kw):
    """Jitted forward and forward+backward (grads of sum(out * dO) w.r.t. q, k, v). A native
    kernel splits its work over threads as the platform decides for a model's layers
    (`Lowering.native_threads`: XLA's pool on one multi-threaded CPU device)."""
    if impl in ("native", "auto") and jax.default_backend() == "cpu":
        from jaxnets.platform.lowering_rule import lowering_for   # CPU only: reads the kernel table
        kw.setdefault("native_threads", lowering_for().native_threads)
    attend = functools.partial(dot_product_attention, causal=causal, implementation=impl, **kw)
    if impl == "pallas_reference":  # upstream jax.experimental Triton kernel, as a baseline
        from jax.experimental.pallas.ops.gpu import attention as upstream
        attend = lambda q, k, v: upstream.mha(q, k, v, None, sm_scale=q.shape[-1] ** -0.5,
                                              causal=causal)
    fwd = jax.jit(attend)
    loss = lambda q, k, v, do: jnp.sum(attend(q, k, v).astype(jnp.float32) * do)
    fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return fwd, fwd_bwd


def random_inputs(b, t, h, d, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    return [jax.random.normal(key, (b, t, h, d), jnp.float32).astype(dtype) for key in keys]


def attention_flops(b, t, h, d, causal, backward):
    fwd = 4 * b * h * t * t * d / (2 if causal else 1)
    return fwd * (3.5 if backward else 1.0)


# ---------------------------------------------------------------- CPU ----------------------
CAUSAL_SHAPES = {"smoke": (32, 128, 4, 32), "large": (16, 256, 6, 64)}   # B, T, H, D
PEER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers",
                    "torch_attention.py")


def causal_vs_peer(repeats, rounds, peer_python):
    """Causal self-attention at the Transformer-LM shapes: the native kernel (this machine's
    build, `JAXNETS_NATIVE_ISA` forces another) and XLA's formula, and the PyTorch peer."""
    from jaxnets.kernels import causal_attention
    impls = ["native", "xla"] if causal_attention.available() else ["xla"]
    fns = {(name, impl): make_fns(impl, causal=True) for name in CAUSAL_SHAPES for impl in impls}
    inputs = {name: random_inputs(*shape, jnp.float32) for name, shape in CAUSAL_SHAPES.items()}
    has_peer = bool(peer_python) and os.path.exists(peer_python)
    ours, theirs = collections.defaultdict(list), collections.defaultdict(list)
    for _ in range(rounds):
        if has_peer:
            cmd = [peer_python, PEER, "--json", "--iters", str(repeats)] + [
                a for name, shape in CAUSAL_SHAPES.items()
                for a in ("--shape", f"{name}=" + ",".join(map(str, shape)))]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            for r in json.loads(out.strip().splitlines()[-1])["results"]:
                for pass_ in ("fwd", "fwd_bwd"):
                    theirs[r["name"], pass_].append(r[f"{pass_}_ms"])
        for (name, impl), (fwd, fwd_bwd) in fns.items():
            q, k, v, do = inputs[name]
            ours[name, impl, "fwd"].append(1e3 * median_seconds(fwd, q, k, v, repeats=repeats))
            ours[name, impl, "fwd_bwd"].append(1e3 * median_seconds(fwd_bwd, q, k, v, do, repeats=repeats))
    rows = []
    for (name, impl, pass_), times in ours.items():
        b, t, h, d = CAUSAL_SHAPES[name]
        flops = attention_flops(b, t, h, d, True, pass_ == "fwd_bwd")
        ms = statistics.median(times)
        row = {"name": f"causal_{name}_{impl}_{pass_}", "impl": impl, "pass": pass_, "B": b, "T": t,
               "H": h, "D": d, "ms": round(ms, 2), **efficiency(flops, ms)}
        if impl == "native":
            from jaxnets.kernels import native
            row["isa"] = native.machine_isa()
        if has_peer:
            peer_ms = statistics.median(theirs[name, pass_])
            row.update({"torch_ms": round(peer_ms, 2), **efficiency(flops, peer_ms, prefix="torch_"),
                        "ratio_jaxnets_over_torch": round(statistics.median(
                            a / b for a, b in zip(times, theirs[name, pass_])), 3)})
        rows.append(row)
    return rows


def cpu_section(repeats, rounds=3, peer_python=None):
    # The memory probe first, in a fresh process, while this one is still small.
    child = subprocess.run([sys.executable, "-m", "benchmarks.attention", "--rss-child",
                            "blockwise", "16384"], capture_output=True, text=True, check=True)
    results = [json.loads(child.stdout.strip().splitlines()[-1])]
    b, t, h, d = 4, 2048, 8, 64
    q, k, v, do = random_inputs(b, t, h, d, jnp.float32)
    times = {}
    for impl in ("xla", "blockwise"):
        fwd, fwd_bwd = make_fns(impl, causal=False)
        for name, fn, args in (("fwd", fwd, (q, k, v)), ("fwd_bwd", fwd_bwd, (q, k, v, do))):
            seconds = median_seconds(fn, *args, repeats=repeats)
            times[impl, name] = seconds
            flops = attention_flops(b, t, h, d, False, name == "fwd_bwd")
            results.append({"name": f"{impl}_{name}_t{t}", "impl": impl, "pass": name, "B": b,
                            "T": t, "H": h, "D": d, "ms": round(seconds * 1e3, 2),
                            **efficiency(flops, seconds * 1e3)})
    for name in ("fwd", "fwd_bwd"):
        results.append({"name": f"blockwise_over_xla_time_{name}_t{t}",
                        "ratio": round(times["blockwise", name] / times["xla", name], 3)})
    return results + causal_vs_peer(repeats, rounds, peer_python)


def peak_rss_mib():
    """This process's high-water RSS (VmHWM). Not ru_maxrss: Linux carries that over from the
    parent across fork+exec, so a child of a big parent would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(impl, t):
    """Runs in a fresh process: peak RSS of one forward+backward at B=1, H=8, D=64."""
    base_mib = peak_rss_mib()
    q, k, v, do = random_inputs(1, t, 8, 64, jnp.float32)
    _, fwd_bwd = make_fns(impl, causal=False)
    start = time.perf_counter()
    grads = jax.block_until_ready(fwd_bwd(q, k, v, do))
    seconds = time.perf_counter() - start
    finite = all(bool(jnp.isfinite(g).all()) for g in grads)
    peak_mib = peak_rss_mib()
    print(json.dumps({"name": f"{impl}_t{t}", "impl": impl, "B": 1, "T": t, "H": 8, "D": 64,
                      "peak_rss_mib": round(peak_mib, 1),
                      "rss_after_import_mib": round(base_mib, 1),
                      "first_call_s_incl_compile": round(seconds, 1), "finite": finite}))


# ---------------------------------------------------------------- GPU ----------------------
def check_against_xla(impl, b, t, h, d, causal):
    """Max |error| of output and grads vs float32 xla on the same bf16-rounded inputs."""
    q, k, v, do = random_inputs(b, t, h, d, jnp.bfloat16, seed=1)
    fwd, fwd_bwd = make_fns(impl, causal)
    ref_fwd, ref_fwd_bwd = make_fns("xla", causal)
    f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
    out_err = float(jnp.max(jnp.abs(fwd(q, k, v).astype(jnp.float32) - ref_fwd(*f32[:3]))))
    grad_err = max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - r)))
                   for g, r in zip(fwd_bwd(q, k, v, do), ref_fwd_bwd(*f32)))
    return out_err, grad_err


def gpu_section(repeats, tiny, partial_out=None):
    if tiny:  # the same code path at toy sizes: CPU check of the GPU script (pallas interprets)
        impls, dims, lengths, tokens, hidden = ("pallas", "cudnn", "xla"), (64,), (128, 256), 256, 128
    else:
        impls, dims = ("pallas", "cudnn", "xla", "pallas_reference"), (64, 128)
        lengths, tokens, hidden = (1024, 4096, 16384), 16384, 2048
    results = []
    for d in dims:
        h = hidden // d
        for causal in (False, True):
            for impl in impls:
                if impl == "xla":
                    continue
                t = lengths[0]
                try:
                    out_err, grad_err = check_against_xla(impl, max(1, tokens // t), t, h, d, causal)
                    # bf16 inputs/outputs: a few bf16 ulps of O(1) values.
                    ok = out_err < 2e-2 and grad_err < 1e-1
                    results.append({"name": f"check_{impl}_d{d}_{'causal' if causal else 'full'}",
                                    "impl": impl, "D": d, "T": t, "causal": causal,
                                    "max_abs_err_out": out_err, "max_abs_err_grad": grad_err,
                                    "ok": ok})
                except Exception as err:  # noqa: BLE001 - record and move on: one run, all figures
                    results.append({"name": f"check_{impl}_d{d}_{'causal' if causal else 'full'}",
                                    "impl": impl, "D": d,
                                    "causal": causal, "error": f"{type(err).__name__}: {err}"[:300]})
            for t in lengths:
                b = max(1, tokens // t)
                q, k, v, do = random_inputs(b, t, h, d, jnp.bfloat16)
                for impl in impls:
                    fwd, fwd_bwd = make_fns(impl, causal)
                    for name, fn, args in (("fwd", fwd, (q, k, v)),
                                           ("fwd_bwd", fwd_bwd, (q, k, v, do))):
                        row = {"name": f"{impl}_{name}_d{d}_t{t}{'_causal' if causal else ''}",
                               "impl": impl, "pass": name, "B": b, "T": t, "H": h, "D": d,
                               "causal": causal}
                        try:
                            seconds = median_seconds(fn, *args, repeats=repeats)
                            flops = attention_flops(b, t, h, d, causal, name == "fwd_bwd")
                            row.update(ms=round(seconds * 1e3, 3),
                                       tflops=round(flops / seconds / 1e12, 1))
                        except Exception as err:  # noqa: BLE001 - e.g. xla out of memory at 16k
                            row["error"] = f"{type(err).__name__}: {err}"[:300]
                        results.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
                        if partial_out:  # a run cut short by its time limit still leaves a table
                            with open(partial_out, "w") as f:
                                json.dump({"benchmark": "attention", "partial": True,
                                           "results": results}, f)
    return results


def print_table(results):
    """pallas / cudnn / xla TFLOP/s per configuration, and pallas over cudnn."""
    rows = {}
    for r in results:
        if "pass" in r and "T" in r and "causal" in r:
            key = (r["pass"], r["D"], r["causal"], r["T"])
            rows.setdefault(key, {})[r["impl"]] = r.get("tflops", "err")
    print(f"{'pass':8} {'D':>4} {'causal':>6} {'T':>6} | {'pallas':>7} {'cudnn':>7} {'xla':>7} "
          f"{'upstream':>8} | pallas/cudnn")
    for (name, d, causal, t), by_impl in sorted(rows.items()):
        p, c = by_impl.get("pallas"), by_impl.get("cudnn")
        ratio = f"{p / c:.2f}" if isinstance(p, float) and isinstance(c, float) and c else "-"
        cells = [str(by_impl.get(i, "-")) for i in ("pallas", "cudnn", "xla", "pallas_reference")]
        print(f"{name:8} {d:>4} {str(causal):>6} {t:>6} | {cells[0]:>7} {cells[1]:>7} "
              f"{cells[2]:>7} {cells[3]:>8} | {ratio}")
    for r in results:
        if r["name"].startswith("check_"):
            print(r["name"], "ok" if r.get("ok") else r.get("error", "MISMATCH"),
                  {k: r[k] for k in ("max_abs_err_out", "max_abs_err_grad") if k in r})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--tiny", action="store_true", help="GPU section at toy sizes, any backend")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument("--rss-child", nargs=2, metavar=("IMPL", "T"))
    parser.add_argument("--table", metavar="JSON_FILE", help="print the table of a saved run")
    parser.add_argument("--peer-python", default="/tmp/peers/bin/python",
                        help="CPU: python of the PyTorch peers venv (skipped if absent)")
    parser.add_argument("--rounds", type=int, default=3, help="CPU: rounds of the peer comparison")
    args = parser.parse_args(argv)
    from jaxnets.platform.install import install_process_settings
    install_process_settings()   # as `jaxnets train` does: malloc, no libtpu on a CPU host
    if args.rss_child:
        return rss_child(args.rss_child[0], int(args.rss_child[1]))
    if args.table:
        with open(args.table) as f:
            return print_table(json.load(f)["results"])
    device = jax.devices()[0]
    if device.platform == "gpu" or args.tiny:
        results = gpu_section(args.repeats or (3 if args.tiny else 10), args.tiny, args.out)
        print_table(results)
    else:
        results = cpu_section(args.repeats or 5, args.rounds, args.peer_python)
    report = {"benchmark": "attention", "device": f"{device.platform}: {device.device_kind}",
              "command": "python -m benchmarks.attention " + " ".join(argv if argv is not None else sys.argv[1:]),
              "jax": jax.__version__, "date": now(), "load_average_1min_at_end": round(os.getloadavg()[0], 1),
              "results": results}
    if device.platform == "cpu":
        report["machine"] = machine()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

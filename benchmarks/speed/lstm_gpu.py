"""LSTM/GRU on the default JAX device (GPU): jaxnets' layers vs cuDNN, side by side.

    python -m benchmarks.lstm_gpu --json [--tiny] [--out FILE] [--budget-s 300]
    python -m benchmarks.lstm_gpu --table FILE          # readable table of a saved report
    bash benchmarks/gpu/lstm.sh [--tiny]                # the prepared GPU run (one call)

Implementations (`impl`), each timed forward (`y, _ = layer(x)`, x [B, T, D] batch-first)
and forward+backward (grad of mean(y**2) w.r.t. the parameters, as benchmarks/speed/lstm.py):
- `jaxnets`: `jaxnets.nn.LSTM` / `GRU` (reset_after), the layers users get; f32 and bf16.
- `jax_cudnn`: `jax.experimental.rnn.lstm` (cuDNN; LSTM only, float32 only upstream).
- `jax_scan_ref`: `jax.experimental.rnn.lstm_ref`, upstream's plain `lax.scan` LSTM (f32).
- `torch`: `torch.nn.LSTM` / `GRU` on cuda (cuDNN) if torch imports and sees a GPU; run
  after all JAX work, so that a failure there loses only its own rows.
All get the SAME weights (cuDNN's packed layout mapped to jaxnets' `input_kernel [D, 4H]`,
`recurrent_kernel [H, 4H]`, `bias = b_ih + b_hh`; gates i, f, C~, o in both), so each row's
`max_abs_err` is its output against jaxnets' float32 output at HIGHEST matmul precision.
`checks` assert agreement at HIGHEST precision (TF32 off) within tolerances: outputs, and
for LSTM the gradient w.r.t. the packed weights. Whatever cannot run (cuDNN off GPU, no
torch, bf16 in JAX's cuDNN LSTM, the time budget) is an entry of `skipped` with its reason.
Timings: compile and warm-up calls, then the median of `--runs` blocked calls. The report
is rewritten after every entry, so a run stopped by `timeout` keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

# torch may share the GPU with JAX in this process: let JAX grow its pool instead of
# taking 75% of the memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnets.nn import recurrent

# (B, T, D, H): the two CPU shapes, then larger ones typical of GPU use.
SHAPES = [(64, 128, 256, 256), (16, 1024, 128, 128), (256, 128, 512, 512), (64, 512, 1024, 1024)]
TINY_SHAPES = [(4, 12, 8, 16)]   # D != H and B != T catch transposed weights or axes
GRAD_CHECK_SHAPES = 2   # gradient checks on the first shapes only (compile time)
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}
TOL = {"y": 1e-4, "grad_w": 1e-4}   # f32 at HIGHEST precision; grad: relative to max |grad|


def name_of(kind, B, T, D, H):
    return f"{kind}_b{B}_t{T}_d{D}_h{H}"


def mean_square(y):
    return jnp.mean(jnp.square(y.astype(jnp.float32)))


def median_ms(fn, warmup, runs, sync=jax.block_until_ready):
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


def init_packed(D, H):
    """cuDNN's packed weights of a one-layer LSTM, U(-1/sqrt(H), 1/sqrt(H)) like upstream's
    `init_lstm_weight`; written here so that jaxnets' rows run without jax.experimental.rnn."""
    k = H ** -0.5
    return jax.random.uniform(jax.random.key(0), (4 * H * (D + H + 2),), jnp.float32, -k, k)


def unpack(w, D, H):
    """Packed (W_ih [4H, D], W_hh [4H, H], b_ih, b_hh), gates i, f, g, o: the layout
    `jax.experimental.rnn.unpack_lstm_weights` reads (the scan-ref check uses upstream's)."""
    sizes = np.cumsum([4 * H * D, 4 * H * H, 4 * H])
    w_ih, w_hh, b_ih, b_hh = jnp.split(w, sizes)
    return w_ih.reshape(4 * H, D), w_hh.reshape(4 * H, H), b_ih, b_hh


def jaxnets_layer(kind, D, H, dtype, w=None):
    """The user-facing layer; for LSTM with the packed weights `w` written into it."""
    layer = {"lstm": recurrent.LSTM, "gru": recurrent.GRU}[kind](D, H, rngs=nnx.Rngs(0), dtype=dtype)
    return layer if w is None else set_lstm_weights(layer, w, D, H)


def set_lstm_weights(layer, w, D, H):
    w_ih, w_hh, b_ih, b_hh = unpack(w, D, H)
    layer.cell.input_kernel[...] = w_ih.T
    layer.cell.recurrent_kernel[...] = w_hh.T
    layer.cell.bias[...] = b_ih + b_hh
    return layer


def torch_weights(kind, layer, H):
    """jaxnets' parameters in torch's layout (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0).
    GRU: jaxnets' update gate z is 1 - z of torch (h = h + z (n - h)), so z's weights and
    bias change sign (sigmoid(-a) = 1 - sigmoid(a)); b_hn is jaxnets' `recurrent_bias`."""
    cell = layer.cell
    w_ih, w_hh, b = (np.asarray(a, np.float32) for a in
                     (cell.input_kernel[...].T, cell.recurrent_kernel[...].T, cell.bias[...]))
    if kind == "lstm":
        return w_ih, w_hh, b, np.zeros_like(b)
    sign = np.concatenate([np.ones(H), -np.ones(H), np.ones(H)]).astype(np.float32)
    b_hh = np.concatenate([np.zeros(2 * H, np.float32), np.asarray(cell.recurrent_bias[...], np.float32)])
    return w_ih * sign[:, None], w_hh * sign[:, None], b * sign, b_hh


def jaxnets_fns(layer):
    graphdef, params = nnx.split(layer)
    forward = lambda params, x: nnx.merge(graphdef, params)(x)[0]   # noqa: E731
    fwd = jax.jit(forward)
    fwd_bwd = jax.jit(jax.grad(lambda p, x: mean_square(forward(p, x))))
    return (lambda x: fwd(params, x)), (lambda x: fwd_bwd(params, x))


def cudnn_forward(w, x, H, precision=None):
    from jax.experimental import rnn
    B, T, D = x.shape
    zeros = jnp.zeros((1, B, H), x.dtype)
    y, _, _ = rnn.lstm(x, zeros, zeros, w, jnp.full((B,), T, jnp.int32), input_size=D,
                       hidden_size=H, num_layers=1, dropout=0.0, bidirectional=False,
                       precision=precision)
    return y


_CUDNN_PROBE = []


def cudnn_unavailable():
    """None if jax.experimental.rnn.lstm runs here, else why not (probed once, tiny LSTM)."""
    if not _CUDNN_PROBE:
        try:
            jax.block_until_ready(jax.jit(lambda w, x: cudnn_forward(w, x, 4))(init_packed(4, 4), jnp.ones((2, 3, 4))))
            _CUDNN_PROBE.append(None)
        except Exception as e:   # on CPU: no cuDNN shape function / lowering
            _CUDNN_PROBE.append(f"jax.experimental.rnn.lstm does not run on {jax.default_backend()}: {reason(e)}")
    return _CUDNN_PROBE[0]


def scan_ref_forward(w, x, H):
    from jax.experimental import rnn
    B, T, D = x.shape
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, D, H, 1, False)
    zeros = jnp.zeros((1, B, H), x.dtype)
    y, _, _ = rnn.lstm_ref(x, zeros, zeros, w_ih, w_hh, b_ih, b_hh,
                           jnp.full((B,), T, jnp.int32), D, H, 1, 0.0, False)
    return y


def jaxnets_from_packed(graphdef, params, w, x, H):
    """jaxnets' LSTM as a function of the packed weights: its gradient w.r.t. w is directly
    comparable with the cuDNN one (this also checks the layout mapping)."""
    # Rebuild the Variables inside this trace (those from nnx.split belong to the outer one).
    layer = nnx.merge(graphdef, jax.tree.map(lambda a: a, params))
    set_lstm_weights(layer, w, x.shape[-1], H)
    return layer(x)[0]


def packed_fns(forward, w, H):
    fwd = jax.jit(lambda w, x: forward(w, x, H))
    fwd_bwd = jax.jit(jax.grad(lambda w, x: mean_square(forward(w, x, H))))
    return (lambda x: fwd(w, x)), (lambda x: fwd_bwd(w, x))


def torch_rows(cases, dtypes, warmup, runs, device, deadline, report):
    """torch.nn.LSTM/GRU rows, imported here only (torch is no dependency of jaxnets)."""
    try:
        import torch
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("torch sees no cuda device")
    except Exception as e:   # ImportError, or a broken CUDA set-up
        report.skip("*", "torch", "*", reason(e))
        return
    report.out["torch"] = {"version": torch.__version__, "device": device,
                           "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
                           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
    for case in cases:
        kind, (_, _, D, H) = case["kind"], case["shape"]
        name = name_of(kind, *case["shape"])
        weights = [torch.from_numpy(np.array(a)) for a in case["torch_weights"]]
        x32 = torch.from_numpy(case["x"]).to(device)
        for dname in dtypes:
            if time.perf_counter() > deadline:
                report.skip(name, "torch", dname, "time budget")
                continue
            try:
                cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
                module = cls(D, H, batch_first=True)
                with torch.no_grad():
                    for p, a in zip([module.weight_ih_l0, module.weight_hh_l0,
                                     module.bias_ih_l0, module.bias_hh_l0], weights):
                        p.copy_(a)
                tdtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dname]
                module = module.to(device=device, dtype=tdtype)
                x = x32.to(tdtype)
                if dname == "f32":   # the check, TF32 off (torch's GRU: the z mapping too)
                    saved, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
                    with torch.no_grad():
                        y = module(x)[0].float().cpu().numpy()
                    torch.backends.cudnn.allow_tf32 = saved
                    report.check(name, "torch", "y", y, case["y_ref"])

                def fwd():
                    with torch.no_grad():
                        return module(x)[0]

                def fwd_bwd():
                    module.zero_grad(set_to_none=True)
                    module(x)[0].float().square().mean().backward()

                err = float(np.max(np.abs(fwd().float().cpu().numpy() - case["y_ref"])))
                report.row(name, "torch", dname, median_ms(fwd, warmup, runs, sync),
                           median_ms(fwd_bwd, warmup, runs, sync), err)
            except Exception as e:
                report.skip(name, "torch", dname, reason(e))


class Report:
    """The JSON report, rewritten to `path` after every entry; progress lines to stdout."""

    def __init__(self, path):
        d = jax.devices()[0]
        self.path = path
        self.out = {"benchmark": "lstm_gpu", "results": [], "checks": [], "skipped": [], "ratios": [],
                    "device": f"{d.platform}:{getattr(d, 'device_kind', d.platform)} x{jax.device_count()}"
                              f" jax {jax.__version__} ({platform.machine()}, {os.cpu_count()} cpus)",
                    "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision)}

    def row(self, name, impl, dtype, fwd_ms, fwd_bwd_ms, err):
        r = {"name": name, "impl": impl, "dtype": dtype, "fwd_ms": fwd_ms, "fwd_bwd_ms": fwd_bwd_ms,
             "max_abs_err": err}
        self.out["results"].append(r)
        self.log(f"{name} {impl} {dtype}: fwd {fwd_ms:.3f} ms, fwd+bwd {fwd_bwd_ms:.3f} ms, err {err:.2e}")
        self.save()

    def check(self, name, impl, what, got, want):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        err = float(np.max(np.abs(got - want)))
        scale = float(np.max(np.abs(want))) if what == "grad_w" else 1.0
        c = {"name": name, "impl": impl, "what": what, "max_abs_err": err, "scale": scale,
             "tol": TOL[what], "ok": bool(err <= TOL[what] * scale)}
        self.out["checks"].append(c)
        self.log(f"check {name} {impl} {what}: max abs err {err:.2e} (scale {scale:.2e}) "
                 f"{'ok' if c['ok'] else 'FAILED'}")
        self.save()

    def skip(self, name, impl, dtype, why):
        self.out["skipped"].append({"name": name, "impl": impl, "dtype": dtype, "reason": why})
        self.log(f"skip {name} {impl} {dtype}: {why}")
        self.save()

    def log(self, line):
        print(line, flush=True)

    def finish(self):
        by = {(r["name"], r["impl"], r["dtype"]): r for r in self.out["results"]}
        for (name, impl, dtype), r in by.items():
            for peer in ("jax_cudnn", "torch", "jax_scan_ref"):
                # JAX's cuDNN LSTM is float32 only: jaxnets bf16 is also set against it.
                p = by.get((name, peer, dtype)) or (by.get((name, peer, "f32")) if peer == "jax_cudnn" else None)
                if impl == "jaxnets" and p:
                    self.out["ratios"].append({
                        "name": name, "dtype": dtype, "vs": f"{peer}_{p['dtype']}",
                        "fwd_ratio": r["fwd_ms"] / p["fwd_ms"], "fwd_bwd_ratio": r["fwd_bwd_ms"] / p["fwd_bwd_ms"]})
        self.out["all_checks_ok"] = all(c["ok"] for c in self.out["checks"])
        self.save()

    def save(self):
        if self.path:
            with open(self.path, "w") as f:
                json.dump(self.out, f, indent=1)


def table(out):
    print(f"device: {out['device']}; torch: {out.get('torch')}")
    print(f"{'name':28s} {'impl':13s} {'dtype':5s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'max err':>9s}")
    for r in out["results"]:
        print(f"{r['name']:28s} {r['impl']:13s} {r['dtype']:5s} {r['fwd_ms']:9.3f} "
              f"{r['fwd_bwd_ms']:11.3f} {r['max_abs_err']:9.1e}")
    print("ratios jaxnets / peer (< 1: jaxnets faster):")
    for r in out["ratios"]:
        print(f"  {r['name']:28s} {r['dtype']:5s} vs {r['vs']:17s} fwd {r['fwd_ratio']:6.2f}  "
              f"fwd+bwd {r['fwd_bwd_ratio']:6.2f}")
    print("checks (f32, HIGHEST precision, vs jaxnets):")
    for c in out["checks"]:
        print(f"  {c['name']:28s} {c['impl']:13s} {c['what']:6s} err {c['max_abs_err']:.1e} "
              f"(tol {c['tol']:.0e} x {c['scale']:.1e}) {'ok' if c['ok'] else 'FAILED'}")
    print("skipped:")
    for s in out["skipped"]:
        print(f"  {s['name']} {s['impl']} {s['dtype']}: {s['reason']}")
    print(f"all checks ok: {out.get('all_checks_ok')}")


def run_jax(kind, shape, dtypes, warmup, runs, deadline, report, grad_check):
    """All JAX rows and checks of one (kind, shape); returns what the torch phase needs."""
    B, T, D, H = shape
    name = name_of(kind, *shape)
    x = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float32)
    w = init_packed(D, H) if kind == "lstm" else None   # cuDNN's, and jaxnets, torch share it
    layer32 = jaxnets_layer(kind, D, H, None, w)
    with jax.default_matmul_precision("highest"):
        y_ref = np.asarray(jaxnets_fns(layer32)[0](x))
        if kind == "lstm":
            graphdef, params = nnx.split(layer32)
            ours = lambda w, x, H: jaxnets_from_packed(graphdef, params, w, x, H)
            g_ref = np.asarray(packed_fns(ours, w, H)[1](x)) if grad_check else None
            for impl, forward in (("jax_scan_ref", scan_ref_forward),
                                  ("jax_cudnn", lambda w, x, H: cudnn_forward(w, x, H, jax.lax.Precision.HIGHEST))):
                if impl == "jax_cudnn" and cudnn_unavailable():
                    continue   # recorded once per row below
                try:
                    fwd, fwd_bwd = packed_fns(forward, w, H)
                    report.check(name, impl, "y", fwd(x), y_ref)
                    if grad_check:
                        report.check(name, impl, "grad_w", fwd_bwd(x), g_ref)
                except Exception as e:
                    report.skip(name, impl, "f32", "check: " + reason(e))
    impls = [("jaxnets", None)] + ([("jax_cudnn", cudnn_forward), ("jax_scan_ref", scan_ref_forward)]
                                   if kind == "lstm" else [])
    for dname in dtypes:
        dtype = DTYPES[dname]
        xd = x.astype(dtype)
        for impl, forward in impls:
            why = ("time budget" if time.perf_counter() > deadline else
                   cudnn_unavailable() if impl == "jax_cudnn" else None)
            if impl != "jaxnets" and dname != "f32":
                why = why or ("jax.experimental.rnn.lstm supports float32 only" if impl == "jax_cudnn"
                              else "timed in float32 only (upstream's reference)")
            if why:
                report.skip(name, impl, dname, why)
                continue
            try:
                if impl == "jaxnets":
                    fwd, fwd_bwd = jaxnets_fns(jaxnets_layer(kind, D, H, dtype, w) if dname != "f32" else layer32)
                else:
                    fwd, fwd_bwd = packed_fns(forward, w, H)
                err = float(np.max(np.abs(np.asarray(fwd(xd), np.float32) - y_ref)))
                report.row(name, impl, dname, median_ms(lambda: fwd(xd), warmup, runs),
                           median_ms(lambda: fwd_bwd(xd), warmup, runs), err)
            except Exception as e:
                report.skip(name, impl, dname, reason(e))
    return {"kind": kind, "shape": shape, "x": np.asarray(x), "y_ref": y_ref,
            "torch_weights": torch_weights(kind, layer32, H)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true", help="no table before the JSON line")
    ap.add_argument("--tiny", action="store_true", help="toy sizes, to test the script on CPU")
    ap.add_argument("--out", default=None, help="write the JSON report here (after every row)")
    ap.add_argument("--table", default=None, help="print the table of a saved report and exit")
    ap.add_argument("--kinds", default="lstm,gru")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="start no row after this many seconds; the last 20%% are kept for torch")
    ap.add_argument("--torch-device", default="cuda", help="'cpu' only to test the torch path")
    args = ap.parse_args()
    if args.table:
        return table(json.load(open(args.table)))
    start = time.perf_counter()
    shapes = TINY_SHAPES if args.tiny else SHAPES
    runs = args.runs or (3 if args.tiny else 20)
    warmup = 1 if args.tiny else 3
    dtypes = args.dtypes.split(",")
    report = Report(args.out)
    report.log(f"device: {report.out['device']}")
    cases = []
    for i, shape in enumerate(shapes):
        for kind in args.kinds.split(","):
            deadline = start + 0.8 * args.budget_s
            if time.perf_counter() > deadline:   # no checks either: they compile too
                report.skip(name_of(kind, *shape), "*", "*", "time budget")
                continue
            try:
                cases.append(run_jax(kind, shape, dtypes, warmup, runs, deadline, report,
                                     grad_check=i < GRAD_CHECK_SHAPES))
            except Exception as e:   # e.g. out of memory at a large shape
                report.skip(name_of(kind, *shape), "*", "*", reason(e))
    torch_rows(cases, dtypes, warmup, runs, args.torch_device, start + args.budget_s, report)
    report.out["wall_s"] = time.perf_counter() - start
    report.finish()
    if not args.json:
        table(report.out)
    print(json.dumps(report.out))


if __name__ == "__main__":
    main()

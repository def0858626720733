"""Transformer LM train step, jaxnets vs PyTorch side by side: one ratio per model size.

    python -m benchmarks.transformer_step [--peer-python /tmp/peers/bin/python] [--json]

Sizes (`SIZES`): `smoke`, experiments/transformer_shakespeare.py's smoke model (3 layers x 128,
4 heads, sinusoidal positions, batch 32 x 128 characters), and `large`, its full model (6 x 384,
6 heads, learned positions, scanned layers) at batch 16 x 256; dropout 0 in both (the peer's
random masks would differ anyway). jaxnets runs exactly as `jaxnets train` does: the real
`Trainer` with the experiment's config (AdamW, global-norm clipping, `cpu_devices`) and its
compiled, donated step on a fixed device-resident batch. The peer is a hand-written PyTorch
model of the same architecture (benchmarks/peers/torch_transformer_lm.py) run in its own venv as a
subprocess (torch is never imported here). Each round runs the peer, then jaxnets, for every
size; the ratio of medians within a round is the figure (`ratio_jaxnets_over_torch`: median
over rounds). `--set KEY=VALUE` overrides the jaxnets config (e.g. model.attention_impl=xla,
cpu_devices=1) to compare levers. `--pin CORE` runs both on one core (one thread each: torch
with OMP_NUM_THREADS=1, jaxnets on one single-threaded device) and the ratio of CPU time per
step (`ratio_cpu`) is then the per-core efficiency, which holds on a loaded machine where wall
times do not. Writes the full report to --out.

`--set train.compute_dtype=bfloat16`: mixed precision against PyTorch's bf16 autocast, with both
sides' float32 steps timed in the same rounds (`bf16_speedup`, `torch_bf16_speedup`); the report
is `transformer_step_bf16`.

`--levers`: the CPU levers of the attention and Linear layers, each variant built in this one
process and timed round-robin (`--rounds`, default 6) against the shipped code, jaxnets only (no peer):
`xla_attention` runs causal attention through the XLA formula instead of the native kernel
(`jaxnets.kernels.causal_attention`); on that path `xla_row_blocks_1` computes it in one block
(the whole masked square; shipped: 4 query-row blocks, `attention_formula.causal_row_blocks`) and
`xla_folded_transposes` lets XLA fold the backward's key-major transposes into its products
(shipped: written out on CPU, `attention_formula._keys_major`); `xla_dense_weight_grad` leaves the
Linear layers' weight gradients to XLA (shipped on AVX-512 builds: the native kernel,
`jaxnets.kernels.dense_weight_grad`); `xla_layer_norm` leaves LayerNorm layers to XLA (shipped
wherever native kernels are on: `jaxnets.kernels.layer_norm`). `--variants` times a subset.
`ratio_to_default` > 1: the shipped choice pays that much.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PEERS_HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers")
SIZES = {
    "smoke": {"arg": "smoke", "batch": 32, "seq_len": 128, "model": {}},
    "large": {"arg": "", "batch": 16, "seq_len": 256, "model": {}},
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--peer-python", default="/tmp/peers/bin/python")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--set", action="append", default=[], help="jaxnets config override KEY=VALUE")
    ap.add_argument("--out", help="also write the full report (every round) to this file")
    ap.add_argument("--pin", type=int, help="run both on this one core, one thread each")
    ap.add_argument("--levers", action="store_true", help="time the attention levers round-robin, jaxnets only")
    ap.add_argument("--variants", nargs="+", choices=LEVERS[1:], help="--levers: only these (and default)")
    args = ap.parse_args(argv)
    if args.levers and "--rounds" not in (argv if argv is not None else sys.argv[1:]):
        args.rounds = 6
    return args


def make_config(size, overrides):
    from jaxnets.config import apply_overrides, load_config
    from jaxnets.options import declared
    spec = SIZES[size]
    c = load_config("experiments/transformer_shakespeare.py" + (f":{spec['arg']}" if spec["arg"] else ""))
    c.data.options = {"seq_len": spec["seq_len"]}
    c.data.batch_size = spec["batch"]
    c.data.eval_batch_size = spec["batch"]
    c.model.dropout = 0.0
    c.train.progress = False
    return apply_overrides(c, list(overrides), declared)   # a model's keywords too


def jaxnets_step(config, workdir):
    """A zero-argument call running one train step (blocking), and the model's shape."""
    from jaxnets.data.pipeline import TrainIterator
    from jaxnets.train.trainer import Trainer
    trainer = Trainer(config, workdir)
    batch = trainer.put_batch(next(iter(TrainIterator(trainer.dataset.splits["train"],
                                                      config.data.batch_size, seed=0))))
    box = {"state": trainer.state, "i": 0}

    def step():
        box["state"], metrics = trainer.jit_train_step(box["state"], batch, box["i"])
        box["i"] += 1
        metrics["loss"].block_until_ready()
    flops = trainer.task.throughput(trainer.module()).get("flops")   # model FLOPs of one step
    return step, trainer.dataset.info["vocab_size"], flops


def time_calls(step, warmup, iters):
    """Median wall ms, min wall ms and median process CPU ms per step."""
    for _ in range(warmup):
        step()
    times, cpu = [], []
    for _ in range(iters):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return statistics.median(times), min(times), statistics.median(cpu)


def is_bf16(config) -> bool:
    return str(config.train.get("compute_dtype") or "float32") == "bfloat16"


def peer(args, size, config, vocab, same_allocator=False):
    m = config.model
    cmd = [args.peer_python, os.path.join(PEERS_HERE, "torch_transformer_lm.py"), "--json", "--name", size,
           "--vocab", str(vocab), "--d-model", str(m.d_model), "--heads", str(m.num_heads),
           "--layers", str(m.num_layers), "--seq-len", str(config.data.options["seq_len"]),
           "--batch", str(config.data.batch_size), "--positions", m.positions,
           "--warmup", str(args.warmup), "--iters", str(args.iters)]
    if is_bf16(config):   # the peer's mixed precision: autocast
        cmd.append("--autocast-bf16")
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if args.pin is not None else {})}
    if same_allocator:   # the peer given jaxnets' malloc settings: the lead is not the allocator's
        from jaxnets.platform.allocator import GLIBC_TUNABLES
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["results"][0]


LEVERS = ("default", "xla_attention", "xla_row_blocks_1", "xla_folded_transposes",
          "xla_dense_weight_grad", "xla_layer_norm")
ATTENTION_LEVERS = LEVERS[1:4]


def lever(name):
    """A context in which the attention layer traces as variant `name` (module constants)."""
    import contextlib
    import dataclasses

    import jax.numpy as jnp

    from jaxnets.kernels import causal_attention
    from jaxnets.nn import attention_formula as attention
    from jaxnets.tasks import common as tasks

    def xla_weight_grads(*a, _rule=tasks.lowering_for, **k):
        return dataclasses.replace(_rule(*a, **k), dense_weight_grad="xla")

    def xla_layer_norms(*a, _rule=tasks.lowering_for, **k):
        return dataclasses.replace(_rule(*a, **k), layer_norm="xla")

    @contextlib.contextmanager
    def patched():
        saved = attention._CAUSAL_ROW_BLOCKS, attention._keys_major, causal_attention.enabled
        saved_rule = tasks.lowering_for
        if name in ATTENTION_LEVERS:
            causal_attention.enabled = lambda: False
        if name == "xla_dense_weight_grad":
            tasks.lowering_for = xla_weight_grads
        if name == "xla_layer_norm":
            tasks.lowering_for = xla_layer_norms
        if name == "xla_row_blocks_1":
            attention._CAUSAL_ROW_BLOCKS = 1
        elif name == "xla_folded_transposes":
            attention._keys_major = lambda x: jnp.swapaxes(x, -1, -2)
        try:
            yield
        finally:
            attention._CAUSAL_ROW_BLOCKS, attention._keys_major, causal_attention.enabled = saved
            tasks.lowering_for = saved_rule
    return patched()


def run_levers(args, configs, argv):
    """Each size's step built (and compiled) once per lever, then timed in alternating rounds."""
    from benchmarks.common import machine, now
    steps, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        levers = [n for n in LEVERS if n == "default" or not args.variants or n in args.variants]
        for s in args.sizes:
            for name in levers:
                with lever(name):   # traced and compiled here, under the variant
                    steps[s, name] = jaxnets_step(configs[s], os.path.join(tmp, f"{s}_{name}"))[0]
                    steps[s, name]()
        times = {key: [] for key in steps}
        for r in range(args.rounds):
            for key, step in steps.items():
                times[key].append(time_calls(step, 1, args.iters)[0])
            print(f"round {r}: " + ", ".join(f"{s}/{n} {times[s, n][-1]:.1f} ms" for s, n in steps),
                  file=sys.stderr)
    for s in args.sizes:
        base = times[s, "default"]
        for name in levers:
            rows.append({"name": f"{s}_{name}", "size": s, "lever": name,
                         "ms_per_step": statistics.median(times[s, name]),
                         "ratio_to_default": statistics.median(t / b for t, b in zip(times[s, name], base))})
    report = {"benchmark": "transformer_step_levers", "command": "python -m benchmarks.transformer_step "
              + " ".join(argv or sys.argv[1:]), "machine": machine(), "date": now(), "results": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    for r in rows:
        print(f"{r['name']}: {r['ms_per_step']:.1f} ms, x{r['ratio_to_default']:.3f} of default")
    print(json.dumps(report))


def main(argv=None):
    args = parse_args(argv)
    if args.pin is not None:   # inherited by the peer's subprocess
        os.sched_setaffinity(0, {args.pin})
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
        os.environ["JAXNETS_CPU_DEVICES"] = "1"   # JAX's one device, single-threaded
    # Before JAX starts: the experiment's CPU device layout (both sizes set cpu_devices).
    from jaxnets.platform.devices import auto_cpu_devices
    from jaxnets.platform.install import install_process_settings
    configs = {s: make_config(s, args.set) for s in args.sizes}
    first = configs[args.sizes[0]]
    auto_cpu_devices([c.data.batch_size for c in configs.values()], first.get("cpu_devices"))
    install_process_settings()   # as `jaxnets train` does
    if args.levers:
        return run_levers(args, configs, argv)
    from benchmarks.common import machine, now
    from benchmarks.peak import efficiency
    steps, vocab, flops, rounds = {}, {}, {}, []
    # Mixed precision (--set train.compute_dtype=bfloat16): float32 steps of both beside it, for
    # each side's speed-up from bf16 measured in the same rounds.
    float32 = {s: make_config(s, [*args.set, "train.compute_dtype=float32"])
               for s in args.sizes if is_bf16(configs[s])}
    steps32 = {}
    with tempfile.TemporaryDirectory() as tmp:
        for s in args.sizes:
            t = time.perf_counter()
            steps[s], vocab[s], flops[s] = jaxnets_step(configs[s], os.path.join(tmp, s))
            steps[s]()
            if s in float32:
                steps32[s] = jaxnets_step(float32[s], os.path.join(tmp, s + "_float32"))[0]
                steps32[s]()
            print(f"{s}: built and compiled in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for r in range(args.rounds):
            rd = {"load_avg_1min": os.getloadavg()[0]}
            for s in args.sizes:
                torch_r = peer(args, s, configs[s], vocab[s])
                same = peer(args, s, configs[s], vocab[s], same_allocator=True)
                ms, best, cpu = time_calls(steps[s], args.warmup, args.iters)
                rd[s] = {"torch_ms": torch_r["ms_per_step"], "jaxnets_ms": ms, "jaxnets_min_ms": best,
                         "torch_same_alloc_ms": same["ms_per_step"], "ratio_same_alloc": ms / same["ms_per_step"],
                         "ratio": ms / torch_r["ms_per_step"], "torch_cpu_ms": torch_r["cpu_ms_per_step"],
                         "jaxnets_cpu_ms": cpu, "ratio_cpu": cpu / torch_r["cpu_ms_per_step"]}
                if s in float32:
                    rd[s]["jaxnets_float32_ms"] = time_calls(steps32[s], args.warmup, args.iters)[0]
                    rd[s]["torch_float32_ms"] = peer(args, s, float32[s], vocab[s])["ms_per_step"]
                print(f"round {r} {s}: jaxnets {ms:.1f} ms, torch {torch_r['ms_per_step']:.1f} ms "
                      f"-> x{rd[s]['ratio']:.2f}; CPU time x{rd[s]['ratio_cpu']:.2f} "
                      f"(load {rd['load_avg_1min']:.1f})", file=sys.stderr)
            rounds.append(rd)
    med = statistics.median
    results = []
    for s in args.sizes:
        c = configs[s]
        ms, torch_ms = med(rd[s]["jaxnets_ms"] for rd in rounds), med(rd[s]["torch_ms"] for rd in rounds)
        dtype = str(c.train.get("compute_dtype") or "float32")
        results.append({"name": s, "layers": c.model.num_layers, "d_model": c.model.d_model,
                        "batch": c.data.batch_size, "seq_len": c.data.options["seq_len"],
                        "ms_per_step": ms, "torch_ms_per_step": torch_ms, "flops_per_step": flops[s],
                        **efficiency(flops[s], ms, dtype), **efficiency(flops[s], torch_ms, dtype, prefix="torch_"),
                        "ratio_jaxnets_over_torch": med(rd[s]["ratio"] for rd in rounds),
                        "ratio_cpu": med(rd[s]["ratio_cpu"] for rd in rounds),
                        "torch_same_alloc_ms_per_step": med(rd[s]["torch_same_alloc_ms"] for rd in rounds),
                        "ratio_jaxnets_over_torch_same_alloc": med(rd[s]["ratio_same_alloc"] for rd in rounds),
                        "tokens_per_s": c.data.batch_size * c.data.options["seq_len"] / ms * 1e3})
        if s in float32:
            f32, torch_f32 = (med(rd[s][k] for rd in rounds) for k in ("jaxnets_float32_ms", "torch_float32_ms"))
            results[-1].update({"float32_ms_per_step": f32, "bf16_speedup": f32 / ms,
                                "torch_float32_ms_per_step": torch_f32,
                                "torch_bf16_speedup": torch_f32 / torch_ms})
    import jax
    suffix = "_pinned" if args.pin is not None else ("_bf16" if float32 else "")
    report = {"benchmark": "transformer_step" + suffix,
              "device": f"cpu jax {jax.__version__} devices={jax.device_count()}",
              "command": "python -m benchmarks.transformer_step " + " ".join(argv or sys.argv[1:]),
              "machine": machine(overrides=args.set), "date": now(), "results": results, "rounds": rounds}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    for r in results:
        print(f"{r['name']}: jaxnets {r['ms_per_step']:.1f} ms, torch {r['torch_ms_per_step']:.1f} ms, "
              f"ratio {r['ratio_jaxnets_over_torch']:.2f}")
    print(json.dumps({k: report[k] for k in ("benchmark", "device", "machine", "date", "results")}))


if __name__ == "__main__":
    main()

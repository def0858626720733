"""Where a CPU step's time goes: XLA:CPU's own per-op trace of a hot path, summed by HLO op.

    python -m benchmarks.op_profile --work lstm [--json] [--save]
    python -m benchmarks.op_profile --work transformer --size smoke
    python -m benchmarks.op_profile --work resnet --size 20

Works: `lstm` (the LSTM layer's forward+backward, `--size b16_t1024` or `b64_t128`, as
`benchmarks.lstm` times it), `transformer` (the Trainer's step of `benchmarks.transformer_step`,
`--size smoke|large`) and `resnet` (`benchmarks.resnet_step`'s step, `--size 20|56`). Each is
built as its benchmark builds it, warmed up, timed (`wall_ms_per_step`), then run `--steps`
times under `jax.profiler.trace`. XLA:CPU records one event per executed thunk (a fusion, a
library matmul or convolution, a copy...) on the thread that ran it; the events are summed by
op name with the numeric suffix removed (`ynn_fusion.12` -> `ynn_fusion`) and by kind:

  library   matmuls and convolutions handed to a library (YNNPACK/XNNPACK/oneDNN fusions,
            dot/convolution thunks, jaxnets' native kernels as FFI calls)
  collective  all-reduces and the like between devices, and their rendezvous waits
  movement  ops and fusions of data movement only: copies, transposes, (dynamic) slices and
            updates, concatenates, broadcasts
  generated XLA's other fused loops (elementwise maths, reductions, softmax...)
  other     everything else (unfused arithmetic, small wrapped ops)

A native kernel's thunk is named only `ffi_call.N` in the trace; the tool reads which kernel each
is from XLA's dump of the optimized programs (`custom_call_targets`) and sums them per kernel
(`ffi_call:CausalAttentionBwd`, `ffi_call:DenseWeightGrad`...), so the per-op table says which of
jaxnets' kernels the time goes to. (It compiles afresh for that: no compilation cache.)

`busy_ms_per_step` is thunk time summed over threads: the executor runs independent thunks side
by side on its threads, so the sum can exceed the wall time (`busy_over_wall`), and one op's
time includes waiting for cores another op holds. Read the shares, not the absolute times.
Results: `--save` writes benchmarks/results/op_profile_{work}_{size}_{cpu}.json, `{cpu}` naming the
CPU model (`benchmarks.common.machine_tag`: `amd_f25m17`), shown by benchmarks.report.
"""
from __future__ import annotations

import argparse
import atexit
import collections
import glob
import os
import re
import shutil
import sys
import tempfile

LIBRARY = ("ynn_", "xnn_", "onednn", "dot", "convolution", "custom-call", "custom_call", "ffi_call")
COLLECTIVE = ("all-reduce", "psum", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
              "Rendezvous", "Wait")   # the last two: devices waiting for each other
MOVEMENT = {"copy", "transpose", "slice", "dynamic-slice", "dynamic-update-slice", "concatenate",
            "bitcast", "broadcast", "pad", "reverse", "gather", "scatter", "reshape"}


KINDS = ("library", "collective", "movement", "generated", "other")


def kind_of(op: str) -> str:
    """library, collective, movement, generated or other, from XLA's op name: a fusion is named after the
    ops it holds (`dynamic-slice_bitcast_fusion`), an unfused op after itself (`copy`)."""
    if op.startswith(LIBRARY):
        return "library"
    if op.startswith(COLLECTIVE):
        return "collective"
    parts = op.removeprefix("wrapped_").removesuffix("_fusion").split("_")
    if set(parts) <= MOVEMENT:
        return "movement"
    return "generated" if op.endswith("fusion") else "other"


def build(work: str, size: str):
    """A zero-argument call running one blocking step of the named work."""
    if work == "lstm":
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from jaxnets.nn import recurrent
        from jaxnets.platform.lowering_rule import lowering_for
        b, t = (int(s[1:]) for s in size.split("_"))
        d = h = 128 if t > 512 else 256
        # Built as `benchmarks.lstm` and experiments build it: the platform's native threads.
        graphdef, params = nnx.split(recurrent.LSTM(d, h, rngs=nnx.Rngs(0), lowering=lowering_for()))
        x = jax.random.normal(jax.random.key(0), (b, t, d), jnp.float32)
        grad = jax.jit(jax.grad(lambda p, x: jnp.mean(jnp.square(nnx.merge(graphdef, p)(x)[0]))))
        return lambda: jax.block_until_ready(grad(params, x))
    workdir = tempfile.mkdtemp(prefix="op_profile_")
    atexit.register(shutil.rmtree, workdir, True)   # the trainer's checkpoints and logs
    if work == "transformer":
        from benchmarks.speed import transformer_step
        step, _, _ = transformer_step.jaxnets_step(transformer_step.make_config(size, []), workdir)
        return step
    from benchmarks.speed import resnet_step
    args = resnet_step.parse_args(["--depths", size])
    step = resnet_step.build_step(resnet_step.make_trainer(int(size), args, workdir), args)
    return lambda: step().block_until_ready()


def prepare_platform(work: str, size: str) -> None:
    """The device layout and process settings the work's benchmark uses, before jax starts."""
    from jaxnets.platform.devices import auto_cpu_devices
    from jaxnets.platform.install import install_process_settings
    if work == "transformer":
        from benchmarks.speed import transformer_step
        config = transformer_step.make_config(size, [])
        auto_cpu_devices([config.data.batch_size], config.get("cpu_devices"))
    elif work == "resnet":
        auto_cpu_devices([128], "auto")
    install_process_settings()   # as `jaxnets train` does (no libtpu on a host without TPUs)


def dump_optimized_programs() -> str:
    """A fresh folder XLA writes each optimized program to as text (set before jax starts its
    backend), and no persistent compilation cache, so that every program is compiled here."""
    folder = tempfile.mkdtemp(prefix="op_profile_hlo_")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={folder} --xla_dump_hlo_as_text".strip()
    os.environ["JAXNETS_COMPILATION_CACHE"] = "0"
    return folder


def custom_call_targets(folder: str) -> dict[tuple[int, str], str]:
    """{(program id, instruction name): the kernel's handler} for every custom call in the
    optimized programs XLA dumped into `folder` (`module_0002.jit_step.cpu_after_optimizations.txt`
    is program 2), each by `_handler`."""
    targets = {}
    for path in glob.glob(os.path.join(folder, "module_*.cpu_after_optimizations.txt")):
        program = int(os.path.basename(path).split(".")[0].removeprefix("module_"))
        with open(path) as f:
            for m in re.finditer(r'^\s*(?:ROOT )?%?([\w.-]+) = .*custom_call_target="([^"]+)"', f.read(), re.M):
                targets[program, m.group(1)] = _handler(m.group(2))
    return targets


def _handler(target: str) -> str:
    """`jaxnets_layer_norm_LayerNormFwd` -> `LayerNormFwd` (a named build keeps its ISA:
    `..._DenseWeightGrad_avx2` -> `DenseWeightGrad_avx2`); other targets whole."""
    parts = target.split("_")
    first = next((i for i, p in enumerate(parts) if p[:1].isupper()), None)
    return "_".join(parts[first:]) if first is not None else target


def profile(step, steps: int, targets: dict[tuple[int, str], str] | None = None) -> dict[str, list[float]]:
    """{op: [busy ns summed over `steps` steps, calls]} from one jax.profiler trace; `targets`
    (`custom_call_targets`) names each custom call's thunk after its kernel."""
    import jax
    from jax.profiler import ProfileData
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                step()
        data = ProfileData.from_file(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0])
        ops: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
        for plane in data.planes:
            for line in plane.lines:
                if "XLA" not in line.name:   # the executor's threads, not Python's
                    continue
                for event in line.events:
                    if "::" in event.name or event.name.startswith(("while", "end:", "cond", "call")):
                        continue   # runtime internals, containers of other thunks, completion markers
                    name = re.sub(r"\.\d+$", "", event.name)
                    kernel = targets and targets.get((_program_id(event), event.name))
                    op = ops[f"{name}:{kernel}" if kernel else name]
                    op[0] += event.duration_ns
                    op[1] += 1
    return ops


def _program_id(event) -> int | None:
    return next((int(v) for k, v in event.stats if k == "program_id"), None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", choices=["lstm", "transformer", "resnet"], required=True)
    ap.add_argument("--size", help="lstm: b16_t1024 (default) or b64_t128; transformer: smoke "
                    "(default) or large; resnet: 20 (default) or 56")
    ap.add_argument("--steps", type=int, default=3, help="steps traced")
    ap.add_argument("--top", type=int, default=15, help="ops listed")
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/op_profile_WORK_SIZE_CPU.json")
    args = ap.parse_args(argv)
    size = args.size or {"lstm": "b16_t1024", "transformer": "smoke", "resnet": "20"}[args.work]
    if args.work == "lstm" and size not in ("b16_t1024", "b64_t128"):
        ap.error("--size for lstm is b16_t1024 or b64_t128")
    programs = dump_optimized_programs()
    prepare_platform(args.work, size)
    from benchmarks.common import machine_tag, report, save, time_fn

    step = build(args.work, size)
    wall = time_fn(step, warmup=3, runs=10)["median_ms"]
    ops = profile(step, args.steps, custom_call_targets(programs))
    shutil.rmtree(programs, ignore_errors=True)
    busy = sum(ns for ns, _ in ops.values()) / args.steps / 1e6
    kinds: dict[str, float] = collections.defaultdict(float)
    for op, (ns, _) in ops.items():
        kinds[kind_of(op)] += ns / args.steps / 1e6
    rows = [{"name": f"{args.work}_{size}", "wall_ms_per_step": wall, "busy_ms_per_step": busy,
             "busy_over_wall": busy / wall,
             **{f"{k}_share": kinds.get(k, 0.0) / busy for k in KINDS}}]
    for op, (ns, calls) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:args.top]:
        ms = ns / args.steps / 1e6
        rows.append({"name": op, "kind": kind_of(op), "busy_ms_per_step": ms, "share": ms / busy,
                     "calls_per_step": calls / args.steps, "us_per_call": ns / calls / 1e3})
    command = "python -m benchmarks.op_profile " + " ".join(argv if argv is not None else sys.argv[1:])
    line = report(f"op_profile_{args.work}_{size}", rows, command=command)
    if args.save:
        save(line, f"op_profile_{args.work}_{size}_{machine_tag()}.json")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")   # the CPU's trace; the TPU plugin's profiler is not loaded
    main()

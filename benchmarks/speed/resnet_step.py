"""ResNet train-step speed: forward + backward + SGD-momentum update, batch 128, 32x32x3.

    python -m benchmarks.resnet_step --json                    # the Trainer's step, ResNet-20/56
    python -m benchmarks.resnet_step --compare [--rounds 3] [--variants default avx2 xla]
    python -m benchmarks.resnet_step --levers [--depths 20] [--rounds 8] [--json]

(`python -m benchmarks.resnet_step_compare ...` and `benchmarks.resnet_step_levers ...` are the
same as `--compare` and `--levers`, through the alias table in benchmarks/__init__.py.)

Step mode (default) times the ResNet exactly as `jaxnets train` runs it: the real `Trainer` built
from `experiments/resnet_cifar.py` (CIFAR form; option-B projections by default, as the PyTorch
peer; SGD momentum 0.9, weight decay 1e-4), its compiled, donated train step fed one
device-resident batch of random 32x32x3 images (no augmentation, as the peer).
`--step nnx_jit` times the straightforward `nnx.jit` step over the same model for comparison.
`--xla-flags` appends to XLA_FLAGS (set before jax is imported) to measure compiler levers.
Last stdout line: {"benchmark": "resnet_step", "device": ..., "results": [{"name": "resnet20",
"ms_per_step": ..., "images_per_s": ...}, ...]}.

`--compare`: jaxnets vs PyTorch side by side, alternating rounds, per-round ratios. Each round
runs the PyTorch peer (`../shared/peers/torch_resnet20.py`, in the separate venv /tmp/peers;
torch is never imported here) and then, for each variant, this benchmark's step mode with that
variant's environment, each as a subprocess. Variants (`COMPARE_VARIANTS`): `default` (the
machine's own native build), `avx2` / `portable` (`JAXNETS_NATIVE_ISA` forces that build), `xla`
(`JAXNETS_NATIVE_KERNELS=0`). On a shared machine absolute times drift; the ratios taken within
one round are the figures to read (medians over rounds in `results`). Writes the raw JSON of
every run, the machine and the ratios to --out.

`--levers`: which levers move the step on CPU, each variant timed round-robin in one process
(medians of per-round ratios to the `split_jit` baseline; the table is `LEVERS`), on the device
layout `--cpu-devices` gives (default: per-core devices, the batch split over them; 0 for one
multi-threaded device).
XLA flags that only take effect process-wide (XLA_FLAGS) are timed with step mode's --xla-flags.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import ROOT, machine, now, peer_script
from benchmarks.peak import efficiency

PEER = peer_script("torch_resnet20.py")
COMPARE_VARIANTS = {"default": {}, "avx2": {"JAXNETS_NATIVE_ISA": "avx2"},
                    "portable": {"JAXNETS_NATIVE_ISA": "portable"}, "xla": {"JAXNETS_NATIVE_KERNELS": "0"}}
STEP_FLAGS = ("batch", "shortcut", "dtype", "step", "xla_flags", "cpu_devices", "warmup", "iters")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--compare", action="store_true", help="jaxnets vs the PyTorch peer, alternating rounds")
    mode.add_argument("--levers", action="store_true", help="time each CPU lever round-robin in one process")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--depths", type=int, nargs="+", help="default: 20 56 (--levers: 20)")
    ap.add_argument("--shortcut", choices=["A", "B"], default="B")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--step", choices=["trainer", "nnx_jit"], default="trainer")
    ap.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for this run")
    ap.add_argument("--cpu-devices", default="auto",
                    help="'auto' (default, as experiments/resnet_cifar.py sets it): one single-threaded CPU device "
                         "per core, batch sharded over them (jaxnets.platform.devices.auto_cpu_devices); "
                         "N > 0: N such devices; 0: JAX's default single multi-threaded device")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, help="--compare (default 3) and --levers (default 8) rounds")
    ap.add_argument("--variants", nargs="+", help="--compare: " + " ".join(COMPARE_VARIANTS)
                    + " (default: default avx2 xla); --levers: names in LEVERS (default: all)")
    ap.add_argument("--peer-python", default="/tmp/peers/bin/python", help="--compare: the PyTorch venv")
    ap.add_argument("--out", help="--compare: where the report goes (default "
                    "benchmarks/results/resnet_step.json); --levers: also write the results there")
    ap.add_argument("--pin", help="--compare: run both pinned to this CPU core (taskset), torch with 1 thread")
    ap.add_argument("jax_args", nargs="*", help="--compare: extra arguments for each step-mode run")
    args = ap.parse_args(argv)
    if args.depths is None:
        args.depths = [20] if args.levers else [20, 56]
    if args.rounds is None:
        args.rounds = 8 if args.levers else 3
    if args.variants is None and args.compare:
        args.variants = ["default", "avx2", "xla"]
    if args.compare and args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" / "resnet_step.json")
    if args.compare and not set(args.variants) <= COMPARE_VARIANTS.keys():
        ap.error(f"--compare variants are {', '.join(COMPARE_VARIANTS)}")
    return args


def random_images(n: int = 256, size: int = 32, seed: int = 0):
    """A CIFAR-shaped dataset of random pixels (the benchmark times steps, not learning)."""
    import numpy as np  # after --xla-flags: jaxnets.data imports jax
    from jaxnets.data import Dataset
    rng = np.random.default_rng(seed)
    split = lambda: {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                     "label": rng.integers(0, 10, n).astype(np.int32)}
    return Dataset("random_images", {"train": split(), "test": split()},
                   {"num_classes": 10, "image_shape": (size, size, 3)})


def make_trainer(depth, args, workdir):
    # jax (through jaxnets) is imported only after main() has applied --xla-flags.
    from jaxnets.config import load_config
    from jaxnets.data import DATASETS
    from jaxnets.train.trainer import Trainer

    DATASETS.register("random_images", "benchmarks.speed.resnet_step:random_images")
    config = load_config(f"experiments/resnet_cifar.py:depth={depth},shortcut={args.shortcut}")
    config.data.name, config.data.options, config.data.augment = "random_images", {}, ()
    config.data.batch_size = args.batch
    config.train.compute_dtype = args.dtype
    config.train.progress = False
    return Trainer(config, workdir)


def build_step(trainer, args):
    """Returns step() -> metrics of one training step on a fixed device-resident batch."""
    import optax  # after --xla-flags (imports jax)
    from flax import nnx

    from jaxnets.data.pipeline import TrainIterator

    batch = trainer.put_batch(next(iter(TrainIterator(
        trainer.dataset.splits["train"], args.batch, seed=0))))
    if args.step == "trainer":
        box = {"state": trainer.state, "i": 0}

        def step():
            box["state"], metrics = trainer.jit_train_step(box["state"], batch, box["i"])
            box["i"] += 1
            return metrics["loss"]
        return step

    # The straightforward version: nnx.jit over the module graph (Python graph walk per call).
    state = trainer.module()
    x, y = trainer.task.inputs(batch), batch["label"]

    @nnx.jit
    def nnx_step(state, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x, train=True), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(state.model)
        state.opt.update(state.model, grads)
        return loss
    return lambda: nnx_step(state, x, y)


def time_step(step, warmup, iters):
    for _ in range(warmup):
        step().block_until_ready()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step().block_until_ready()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times), 1e3 * min(times)


def train_step_flops(trainer, batch: int) -> float:
    """Model FLOPs of one train step: 3x the forward pass (its input and weight gradients cost
    one forward each), the forward counted by XLA's cost analysis of the model built with plain
    lax layers (`Lowering()`): the CPU lowering's folded layers would count work the network
    does not need, and its native kernels are custom calls XLA cannot count."""
    import jax
    from flax import nnx

    from jaxnets.models import build_model
    from jaxnets.nn.lowering import PLAIN
    model = nnx.eval_shape(lambda: build_model(trainer.config.model, nnx.Rngs(0), lowering=PLAIN))
    graphdef, params = nnx.split(model)
    image = jax.ShapeDtypeStruct((batch, *trainer.dataset.info["image_shape"]), jax.numpy.float32)
    cost = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)).lower(params, image).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost   # a list in older jax
    return 3.0 * float(cost["flops"])


def set_up_process(args):
    """XLA_FLAGS, the process settings `jaxnets train` installs and the CPU device layout, all
    before jax is imported."""
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    from jaxnets.platform.devices import auto_cpu_devices, one_device_per_core
    from jaxnets.platform.install import install_process_settings
    install_process_settings()   # malloc, compilation cache: as `jaxnets train` does
    if args.cpu_devices == "auto":
        auto_cpu_devices([args.batch], "auto")
    elif int(args.cpu_devices) > 0:
        one_device_per_core(int(args.cpu_devices))


def run_step_mode(args):
    set_up_process(args)
    import jax

    results = []
    for depth in args.depths:
        with tempfile.TemporaryDirectory() as workdir:
            trainer = make_trainer(depth, args, workdir)
            t0 = time.perf_counter()
            step = build_step(trainer, args)
            step().block_until_ready()
            compile_s = time.perf_counter() - t0
            ms, best = time_step(step, args.warmup, args.iters)
            flops = train_step_flops(trainer, args.batch)
        results.append({"name": f"resnet{depth}", "batch": args.batch, "ms_per_step": ms,
                        "min_ms_per_step": best, "images_per_s": args.batch / ms * 1e3,
                        "compile_s": compile_s, "flops_per_step": flops,
                        **efficiency(flops, ms, args.dtype)})
        if not args.json:
            print(f"resnet{depth}: {ms:.1f} ms/step (min {best:.1f}), "
                  f"{args.batch / ms * 1e3:.0f} img/s, first step {compile_s:.1f} s", file=sys.stderr)
    device = (f"cpu jax {jax.__version__} {platform.machine()} cores={os.cpu_count()} devices={jax.device_count()} "
              f"step={args.step} shortcut={args.shortcut} dtype={args.dtype} "
              f"XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}' load={os.getloadavg()[0]:.1f}")
    print(json.dumps({"benchmark": "resnet_step", "device": device, "results": results}))


# ---- --compare: the PyTorch peer and step-mode subprocesses, alternating rounds ----

def last_json(cmd: list[str], pin: str | None = None, tuned_allocator: bool = False,
              env_extra: dict | None = None) -> dict:
    env = {**os.environ, **(env_extra or {})}
    if tuned_allocator:
        from jaxnets.platform.allocator import GLIBC_TUNABLES  # a constant; jaxnets.platform imports jax
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    if pin is not None:   # one core each, one compute thread for torch: per-core efficiency
        cmd = ["taskset", "-c", pin, *cmd]
        env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def by_result_name(run: dict) -> dict:
    return {r["name"]: r for r in run["results"]}


def ratios_over(jax_run: dict, peer_by_name: dict) -> dict:
    """jaxnets ms / peer ms per result name present in both."""
    return {r["name"]: r["ms_per_step"] / peer_by_name[r["name"]]["ms_per_step"]
            for r in jax_run["results"] if r["name"] in peer_by_name}


def step_mode_argv(args) -> list[str]:
    """The step-mode flags this run was given, passed on to each variant's subprocess."""
    out = ["--depths", *map(str, args.depths)]
    for name in STEP_FLAGS:
        out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return out + list(args.jax_args)


def run_compare(args, argv):
    rounds = []
    for i in range(args.rounds):
        load = os.getloadavg()[0]
        rd = {"load_avg_1min": load, "torch": last_json([args.peer_python, PEER, "--json"], args.pin)}
        # PyTorch as a user gets it, and given jaxnets' malloc settings (the lead is not the allocator's).
        rd["torch_tuned_allocator"] = last_json([args.peer_python, PEER, "--json"], args.pin, True)
        peer = by_result_name(rd["torch"])
        for v in args.variants:
            rd[v] = last_json([sys.executable, "-m", "benchmarks.speed.resnet_step", "--json", *step_mode_argv(args)],
                              args.pin, env_extra=COMPARE_VARIANTS[v])
            rd[f"ratio_{v}"] = ratios_over(rd[v], peer)
        rounds.append(rd)
        print(f"round {i}: load {load:.1f}; " + "; ".join(
            f"{n}: torch {peer[n]['ms_per_step']:.0f} ms, " + ", ".join(
                f"{v} {by_result_name(rd[v])[n]['ms_per_step']:.0f} ms x{rd[f'ratio_{v}'][n]:.2f}"
                for v in args.variants)
            for n in rd[f"ratio_{args.variants[0]}"]), flush=True)
        report = write_compare(args, argv, rounds)
    print(json.dumps({k: report[k] for k in ("benchmark", "device", "results")}))


def write_compare(args, argv, rounds) -> dict:
    """The report over the rounds so far, written to --out (after every round)."""
    names = list(rounds[0][f"ratio_{args.variants[0]}"])
    med = statistics.median
    summary = []
    for n in names:
        s = {"name": n, "torch_ms_per_step": med(by_result_name(rd["torch"])[n]["ms_per_step"] for rd in rounds),
             "torch_same_alloc_ms_per_step": med(by_result_name(rd["torch_tuned_allocator"])[n]["ms_per_step"]
                                                 for rd in rounds)}
        for v in args.variants:
            s[f"{v}_ms_per_step"] = med(by_result_name(rd[v])[n]["ms_per_step"] for rd in rounds)
            s[f"ratio_{v}_over_torch"] = med(rd[f"ratio_{v}"][n] for rd in rounds)
        flops = by_result_name(rounds[0][args.variants[0]])[n].get("flops_per_step")
        s["flops_per_step"] = flops
        for v in args.variants:
            s.update(efficiency(flops, s[f"{v}_ms_per_step"], args.dtype, prefix=f"{v}_"))
        s.update(efficiency(flops, s["torch_ms_per_step"], args.dtype, prefix="torch_"))
        if "default" in args.variants:
            s["ms_per_step"], s["ratio_jaxnets_over_torch"] = s["default_ms_per_step"], s["ratio_default_over_torch"]
            s["fraction_of_peak"] = s["default_fraction_of_peak"]
            s["ratio_jaxnets_over_torch_same_alloc"] = med(
                by_result_name(rd["default"])[n]["ms_per_step"]
                / by_result_name(rd["torch_tuned_allocator"])[n]["ms_per_step"] for rd in rounds)
            if "xla" in args.variants:   # per round: the native path against XLA's alone
                s["ratio_default_over_xla"] = med(by_result_name(rd["default"])[n]["ms_per_step"]
                                                  / by_result_name(rd["xla"])[n]["ms_per_step"] for rd in rounds)
        summary.append(s)
    given = list(argv if argv is not None else sys.argv[1:])
    report = {"benchmark": "resnet_step_compare", "device": rounds[0][args.variants[0]]["device"],
              "command": "python -m benchmarks.resnet_step " + " ".join(
                  given if "--compare" in given else ["--compare", *given]),
              "machine": machine(variants={v: COMPARE_VARIANTS[v] for v in args.variants}), "date": now(),
              "note": "medians over rounds of per-round ratios; each round runs torch then every variant",
              "results": summary, "rounds": rounds}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return report


# ---- --levers: each CPU lever timed round-robin in one process ----

LEVERS = {  # name -> (model keywords, step, donate, compiler options)
    "split_jit": ({}, "split", True, None),            # pure jax.jit over nnx.split state, donated (baseline)
    "trainer": ({}, "trainer", True, None),            # the real Trainer's compiled step
    "no_donate": ({}, "split", False, None),           # the same without buffer donation
    "nnx_jit": ({}, "nnx_jit", True, None),            # straightforward nnx.jit over the module graph
    "bf16": ({"dtype": "bfloat16"}, "split", True, None),
    "shortcut_A": ({"shortcut": "A"}, "split", True, None),   # parameter-free option-A shortcuts
    "no_bn": ({"batch_norm": False}, "split", True, None),    # upper bound on any BN fusion
    "fast_math": ({}, "split", True, {"xla_cpu_enable_fast_math": True}),
    "no_ynn": ({}, "split", True, {"xla_cpu_experimental_ynn_fusion_type": ""}),  # YNNPACK fusions off
    "xla_filter_grad": ({}, "trainer", True, None),      # 3x3 filter gradients by XLA, not the native kernel
    "no_fold": ({}, "trainer", True, None),              # 16-channel 3x3 convolutions unfolded
    "no_barrier": ({}, "trainer", True, None),           # no fusion barriers on convolution inputs
    "xla_forward": ({}, "trainer", True, None),          # 3x3 convolutions and input gradients by XLA
    "nnx_batch_norm": ({}, "trainer", True, None),       # flax's BatchNorm (autodiff), not jaxnets.nn.batch_norm
    "xla_bn_sums": ({}, "trainer", True, None),          # batch norm's channel sums by XLA, not the native kernel
    "every_barrier": ({}, "trainer", True, None),        # a fusion barrier on every convolution input
    "xla_stride2": ({}, "trainer", True, None),          # stride-2 3x3 convolutions by XLA, not the native kernels
    "identity_barriers": ({}, "trainer", True, None),    # fusion barriers as identity matmuls, not the native call
    "xla_pointwise": ({}, "trainer", True, None),        # 1x1 convolutions by XLA, not matmuls with the native dW
}


def lever_lowering(name):
    """The platform's CPU lowering with the lever's one CPU path switched off (the choices are
    arguments of the model: jaxnets.nn.lowering.Lowering)."""
    import dataclasses

    from jaxnets.platform.lowering_rule import lowering_for  # imports jax: only in --levers mode
    lowering = lowering_for()
    if name == "xla_filter_grad":
        return dataclasses.replace(lowering, conv=dataclasses.replace(
            lowering.conv, default_filter_grad="xla", filter_grad=()))
    if name == "xla_forward":
        return dataclasses.replace(lowering, conv=dataclasses.replace(lowering.conv, forward="xla"))
    if name == "no_fold":
        return dataclasses.replace(lowering, conv=dataclasses.replace(lowering.conv, fold=False))
    if name == "no_barrier":
        return dataclasses.replace(lowering, fusion_barriers=False)
    if name == "xla_bn_sums":
        return dataclasses.replace(lowering, batch_norm_sums="xla")
    if name == "xla_pointwise":
        return dataclasses.replace(lowering, conv=dataclasses.replace(lowering.conv, pointwise="xla"))
    return lowering


def make_lever(name, depth, batch, workdir):
    import jax  # only in --levers mode (step mode must set XLA_FLAGS first)
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from jaxnets.kernels import fusion_barrier
    from jaxnets.models import ResNet, resnet
    from jaxnets.nn import batch_norm, conv

    kwargs, kind, donate, options = LEVERS[name]
    if kind == "trainer":   # the Trainer's step, its models built with the lever's lowering
        from unittest import mock
        args = argparse.Namespace(shortcut="B", batch=batch, dtype="float32", step="trainer")
        lever_dir = os.path.join(workdir, name)   # one workdir per Trainer (each holds a lock)
        norm = batch_norm.BatchNorm
        if name == "nnx_batch_norm":   # flax's own layer takes no `sums`: autodiff and XLA's sums
            norm = lambda *args, sums=None, **kwargs: nnx.BatchNorm(*args, **kwargs)   # noqa: E731
        # every_barrier: as if XLA ran every convolution (the placement before session 14)
        reads = (lambda *_: False) if name == "every_barrier" else resnet.native_reads
        # xla_stride2: conv3x3 takes stride-1 convolutions only (before session 14)
        stride = conv._3x3_stride
        if name == "xla_stride2":
            stride = lambda lhs, rhs, strides, *a, s=stride: s(lhs, rhs, strides, *a) if tuple(strides) == (1, 1) else 0  # noqa: E731
        # identity_barriers: the barrier as a matmul with the identity (before session 15)
        barrier_call = (lambda _: False) if name == "identity_barriers" else fusion_barrier.supported
        with mock.patch("jaxnets.tasks.common.lowering_for", lambda *_: lever_lowering(name)), \
                mock.patch.object(batch_norm, "BatchNorm", norm), mock.patch.object(resnet, "native_reads", reads), \
                mock.patch.object(conv, "_3x3_stride", stride), \
                mock.patch.object(fusion_barrier, "supported", barrier_call):
            step = build_step(make_trainer(depth, args, lever_dir), args)
            jax.block_until_ready(step())   # traced (and compiled) here, under the lever's patches
        return step
    kwargs = {k: (jnp.dtype(v) if k == "dtype" else v) for k, v in kwargs.items()}
    model = ResNet(depth, 10, **{"shortcut": "B", **kwargs}, lowering=lever_lowering(name),
                   rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch))
    replicated = None
    if jax.device_count() > 1:   # per-core devices (--cpu-devices): the batch split over them
        mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        x, y = jax.device_put(x, batch_sharding), jax.device_put(y, batch_sharding)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x, train=True), y).mean()
    if kind == "nnx_jit":
        @nnx.jit
        def nnx_step(model, opt):
            loss, grads = nnx.value_and_grad(loss_fn)(model)
            opt.update(model, grads)
            return loss
        return lambda: nnx_step(model, opt)
    graphdef, state = nnx.split((model, opt))
    if replicated is not None:   # parameters and optimizer state on every device
        state = jax.device_put(state, replicated)

    def pure_step(state):
        model, opt = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return nnx.state((model, opt)), loss

    jitted = jax.jit(pure_step, donate_argnums=(0,) if donate else (), compiler_options=options)
    box = [state]

    def step():
        box[0], loss = jitted(box[0])
        return loss
    return step


def run_levers(args):
    set_up_process(args)
    import jax  # only in --levers mode
    names = args.variants or list(LEVERS)
    unknown = sorted(set(names) - LEVERS.keys())
    if unknown:
        raise SystemExit(f"unknown --levers variants {unknown}; known: {', '.join(LEVERS)}")
    results = []
    for depth in args.depths:
        with tempfile.TemporaryDirectory() as workdir:
            steps = {}
            for name in names:
                steps[name] = make_lever(name, depth, args.batch, workdir)
                for _ in range(2):                           # compile + warm up
                    steps[name]().block_until_ready()
            times = {name: [] for name in steps}
            for _ in range(args.rounds):
                for name, step in steps.items():
                    t = time.perf_counter()
                    step().block_until_ready()
                    times[name].append(1e3 * (time.perf_counter() - t))
        base_name = "split_jit" if "split_jit" in times else names[0]
        base = times[base_name]
        for name, ts in times.items():
            ratio = statistics.median(t / b for t, b in zip(ts, base))
            results.append({"name": name, "depth": depth, "ms_per_step": statistics.median(ts), "min_ms": min(ts),
                            "ratio_to_split_jit": ratio, "baseline": base_name})
            if not args.json:
                print(f"resnet{depth} {name:15s} median {statistics.median(ts):8.1f} ms  min {min(ts):8.1f} ms  "
                      f"x{ratio:.2f} of {base_name} (median of per-round ratios)")
    report = {"benchmark": "resnet_step_levers",
              "device": f"cpu jax {jax.__version__} cores={os.cpu_count()} devices={jax.device_count()} "
                        f"depths={args.depths} rounds={args.rounds} load={os.getloadavg()[0]:.1f}",
              "results": results}
    print(json.dumps(report))
    if args.out:
        report.update(command="python -m benchmarks.resnet_step " + " ".join(sys.argv[1:]),
                      machine=machine(), date=now())
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


def main(argv=None):
    args = parse_args(argv)
    if args.compare:
        run_compare(args, argv)
    elif args.levers:
        run_levers(args)
    else:
        run_step_mode(args)


if __name__ == "__main__":
    main()

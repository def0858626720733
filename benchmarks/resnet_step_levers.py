"""Which levers move the ResNet train step on CPU: each variant timed round-robin in one process.

    python -m benchmarks.resnet_step_levers [--depth 20] [--rounds 8] [--json]

On a shared machine absolute times drift by 2-5x within minutes; timing every variant once per
round, for several rounds, and comparing medians of the per-round ratios to the baseline keeps
the comparison fair. Variants (all forward + backward + SGD-momentum update, batch 128, 32x32x3):
  trainer        the real Trainer's compiled step (what `jaxnets train` runs)
  split_jit      pure jax.jit over nnx.split state, state donated  (baseline)
  no_donate      the same without buffer donation
  nnx_jit        straightforward nnx.jit over the module graph
  bf16           compute dtype bfloat16 (params float32)
  shortcut_A     parameter-free option-A shortcuts instead of 1x1 projections
  no_bn          no batch norm at all (an upper bound on what any BN fusion could save)
  fast_math      XLA compiler option xla_cpu_enable_fast_math=true
  no_ynn         XLA compiler option: YNNPACK fusions off (convolutions on XLA's own emitters)
  xla_filter_grad  3x3 filter gradients by XLA instead of the native kernel (jaxnets.kernels)
  no_fold        16-channel 3x3 convolutions unfolded (jaxnets.nn.conv.FOLD_MAX_CHANNELS = 0)
  no_barrier     no identity-matmul fusion barriers on convolution inputs (materialize)
XLA flags that only take effect process-wide (XLA_FLAGS) are timed with
`python -m benchmarks.resnet_step --xla-flags=...`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.resnet_step import build_step, make_trainer
from jaxnets.models import ResNet
from jaxnets.platform.lowering import lowering_for

VARIANTS = {  # name -> (model keywords, step, donate, compiler options)
    "split_jit": ({}, "split", True, None),
    "trainer": ({}, "trainer", True, None),
    "no_donate": ({}, "split", False, None),
    "nnx_jit": ({}, "nnx_jit", True, None),
    "bf16": ({"dtype": jnp.bfloat16}, "split", True, None),
    "shortcut_A": ({"shortcut": "A"}, "split", True, None),
    "no_bn": ({"batch_norm": False}, "split", True, None),
    "fast_math": ({}, "split", True, {"xla_cpu_enable_fast_math": True}),
    "no_ynn": ({}, "split", True, {"xla_cpu_experimental_ynn_fusion_type": ""}),
    "xla_filter_grad": ({}, "split", True, None),
    "no_fold": ({}, "split", True, None),
    "no_barrier": ({}, "split", True, None),
}
# Variants that switch off one of jaxnets' own CPU paths: the platform's lowering with one choice
# changed (jaxnets.nn.lowering.Lowering).
LOWERING_CHANGES = {
    "xla_filter_grad": lambda l: dataclasses.replace(
        l, conv=dataclasses.replace(l.conv, default_filter_grad="xla", filter_grad=())),
    "no_fold": lambda l: dataclasses.replace(l, conv=dataclasses.replace(l.conv, fold=False)),
    "no_barrier": lambda l: dataclasses.replace(l, fusion_barriers=False),
}


def make_variant(name, depth, batch, workdir):
    kwargs, kind, donate, options = VARIANTS[name]
    if kind == "trainer":
        args = argparse.Namespace(shortcut="B", batch=batch, dtype="float32", step="trainer")
        return build_step(make_trainer(depth, args, workdir), args)
    lowering = LOWERING_CHANGES.get(name, lambda l: l)(lowering_for())
    model = ResNet(depth, 10, **{"shortcut": "B", **kwargs}, lowering=lowering,
                   rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch))
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x, train=True), y).mean()
    if kind == "nnx_jit":
        @nnx.jit
        def nnx_step(model, opt):
            loss, grads = nnx.value_and_grad(loss_fn)(model)
            opt.update(model, grads)
            return loss
        return lambda: nnx_step(model, opt)
    graphdef, state = nnx.split((model, opt))

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        steps = {}
        for name in args.variants:
            steps[name] = make_variant(name, args.depth, args.batch, workdir)
            for _ in range(2):                           # compile + warm up
                steps[name]().block_until_ready()
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                t = time.perf_counter()
                step().block_until_ready()
                times[name].append(1e3 * (time.perf_counter() - t))
    base = times["split_jit"] if "split_jit" in times else times[args.variants[0]]
    results = []
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        results.append({"name": name, "ms_per_step": statistics.median(ts), "min_ms": min(ts),
                        "ratio_to_split_jit": ratio})
        if not args.json:
            print(f"{name:12s} median {statistics.median(ts):8.1f} ms  min {min(ts):8.1f} ms  "
                  f"x{ratio:.2f} of split_jit (median of per-round ratios)")
    print(json.dumps({"benchmark": "resnet_step_levers",
                      "device": f"cpu jax {jax.__version__} cores={os.cpu_count()} depth={args.depth} "
                                f"rounds={args.rounds} load={os.getloadavg()[0]:.1f}",
                      "results": results}))


if __name__ == "__main__":
    main()

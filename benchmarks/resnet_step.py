"""ResNet train-step speed: forward + backward + SGD-momentum update, batch 128, 32x32x3.

    python -m benchmarks.resnet_step --json
    /tmp/peers/bin/python ../shared/peers/torch_resnet20.py --json && python -m benchmarks.resnet_step --json

Times the ResNet exactly as `jaxnets train` runs it: the real `Trainer` built from
`experiments/resnet_cifar.py` (CIFAR form; option-B projections by default, as the PyTorch
peer; SGD momentum 0.9, weight decay 1e-4), its compiled, donated train step fed one
device-resident batch of random 32x32x3 images (no augmentation, as the peer).
`--step nnx_jit` times the straightforward `nnx.jit` step over the same model for comparison.
`--xla-flags` appends to XLA_FLAGS (set before jax is imported) to measure compiler levers.
Last stdout line: {"benchmark": "resnet_step", "device": ..., "results": [{"name": "resnet20",
"ms_per_step": ..., "images_per_s": ...}, ...]}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--depths", type=int, nargs="+", default=[20, 56])
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
    return ap.parse_args(argv)


def random_images(n: int = 256, size: int = 32, seed: int = 0):
    """A CIFAR-shaped dataset of random pixels (the benchmark times steps, not learning)."""
    import numpy as np
    from jaxnets.data import Dataset
    rng = np.random.default_rng(seed)
    split = lambda: {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                     "label": rng.integers(0, 10, n).astype(np.int32)}
    return Dataset("random_images", {"train": split(), "test": split()},
                   {"num_classes": 10, "image_shape": (size, size, 3)})


def make_trainer(depth, args, workdir):
    from jaxnets.config import load_config
    from jaxnets.data import DATASETS
    from jaxnets.train.trainer import Trainer

    DATASETS.register("random_images", "benchmarks.resnet_step:random_images")
    config = load_config(f"experiments/resnet_cifar.py:depth={depth},shortcut={args.shortcut}")
    config.data.name, config.data.options, config.data.augment = "random_images", {}, ()
    config.data.batch_size = args.batch
    config.train.compute_dtype = args.dtype
    config.train.progress = False
    return Trainer(config, workdir)


def build_step(trainer, args):
    """Returns step() -> metrics of one training step on a fixed device-resident batch."""
    import jax
    import optax
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
    del jax
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


def main(argv=None):
    args = parse_args(argv)
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    from jaxnets.platform.devices import auto_cpu_devices, one_device_per_core
    from jaxnets.platform.install import install_process_settings
    install_process_settings()   # as `jaxnets train` does
    if args.cpu_devices == "auto":
        auto_cpu_devices([args.batch], "auto")
    elif int(args.cpu_devices) > 0:
        one_device_per_core(int(args.cpu_devices))
    import jax

    import tempfile

    results = []
    for depth in args.depths:
        with tempfile.TemporaryDirectory() as workdir:
            trainer = make_trainer(depth, args, workdir)
            t0 = time.perf_counter()
            step = build_step(trainer, args)
            step().block_until_ready()
            compile_s = time.perf_counter() - t0
            ms, best = time_step(step, args.warmup, args.iters)
        results.append({"name": f"resnet{depth}", "batch": args.batch, "ms_per_step": ms,
                        "min_ms_per_step": best, "images_per_s": args.batch / ms * 1e3,
                        "compile_s": compile_s})
        if not args.json:
            print(f"resnet{depth}: {ms:.1f} ms/step (min {best:.1f}), "
                  f"{args.batch / ms * 1e3:.0f} img/s, first step {compile_s:.1f} s", file=sys.stderr)
    device = (f"cpu jax {jax.__version__} {platform.machine()} cores={os.cpu_count()} devices={jax.device_count()} "
              f"step={args.step} shortcut={args.shortcut} dtype={args.dtype} "
              f"XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}' load={os.getloadavg()[0]:.1f}")
    print(json.dumps({"benchmark": "resnet_step", "device": device, "results": results}))


if __name__ == "__main__":
    main()

"""Speed of the trainer's compiled train step on the mnist_cnn experiment.

    python -m benchmarks.train_step --json [--batch 128] [--runs 30]

Builds the real `Trainer` (same jit, shardings and donation as `jaxnets train`), feeds one
device-resident batch repeatedly (so the figure is the step, not the input pipeline), and
reports the median over `--runs` steps after warm-up. A second result times the full loop
iteration including host batch gathering and transfer (`with_input_pipeline`).
"""
from __future__ import annotations

import argparse
import tempfile

import jax

from benchmarks.common import report, time_fn
from jaxnets.config import load_config
from jaxnets.data.pipeline import TrainIterator
from jaxnets.platform.install import install_process_settings
from jaxnets.train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    install_process_settings()   # malloc, compilation cache: as `jaxnets train` does

    config = load_config("experiments/mnist_cnn.py")
    config.data.batch_size = args.batch
    config.train.progress = False
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(config, workdir)
        it = TrainIterator(trainer.dataset.splits["train"], args.batch, seed=0)
        batch = trainer.put_batch(next(it))
        step = {"i": 0}

        def device_step():
            trainer.state, m = trainer.jit_train_step(trainer.state, batch, step["i"])
            step["i"] += 1
            jax.block_until_ready(m)

        def pipeline_step():
            m = trainer.step(next(it), step["i"])
            step["i"] += 1
            jax.block_until_ready(m)

        results = []
        for name, fn in (("mnist_cnn", device_step), ("mnist_cnn_with_input_pipeline", pipeline_step)):
            t = time_fn(fn, warmup=5, runs=args.runs)
            ms = t["median_ms"]
            results.append({"name": name, "batch": args.batch, "ms_per_step": ms,
                            "steps_per_s": 1e3 / ms, "examples_per_s": args.batch * 1e3 / ms,
                            "min_ms": t["min_ms"], "max_ms": t["max_ms"]})
    report("train_step", results)


if __name__ == "__main__":
    main()

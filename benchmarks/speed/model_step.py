"""Train-step throughput of the trainer's compiled step: Transformer LM (tokens/s, TFLOP/s, MFU)
and ResNet (images/s), on whatever device JAX gives; the GPU scripts' workhorse.

    python -m benchmarks.model_step --model transformer_lm --json            # GPU-sized
    python -m benchmarks.model_step --model resnet --tiny                    # CPU check, seconds

GPU sizes: a 12 x 1024 decoder-only LM (context 1024, batch 32, bf16 compute, fused attention
via `attention_impl="auto"`: cuDNN for bf16 on GPU) and ResNet-56 on 28 x 28 MNIST-5k images at
full resolution (batch 256, bf16; the offline data, so nothing is downloaded).
`--tiny` shrinks both to CPU toys to check the script end to end. Real `Trainer` (same jit,
shardings and donation as `jaxnets train`) on a device-resident batch, median over `--runs`.
MFU = model FLOPs per step (the task's count) / step time / the device's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import json
import tempfile

import jax

from benchmarks.common import report, time_fn
from jaxnets.config import apply_overrides, load_config
from jaxnets.data.pipeline import TrainIterator
from jaxnets.options import declared
from jaxnets.platform.install import install_process_settings
from jaxnets.train.trainer import Trainer, peak_flops_per_device

SIZES = {
    ("transformer_lm", False): ("experiments/transformer_shakespeare.py", [
        "model.d_model=1024", "model.num_heads=16", "model.num_layers=12", "model.max_len=1024",
        "data.options.seq_len=1024", "data.batch_size=32", "train.compute_dtype='bfloat16'"]),
    ("transformer_lm", True): ("experiments/transformer_shakespeare.py:smoke", [
        "model.num_layers=1", "model.d_model=32", "data.options.seq_len=32", "data.batch_size=8"]),
    ("resnet", False): ("experiments/resnet_cifar.py:mnist", [
        "model.depth=56", "model.stem_stride=1", "data.batch_size=256",
        "train.compute_dtype='bfloat16'"]),
    ("resnet", True): ("experiments/resnet_cifar.py:smoke", ["data.batch_size=16", "model.depth=8"]),
    # ResNet-50 v1.5 at 224 px, bf16: the ImageNet recipe on a fixture folder (`--set
    # data.options.root=DIR`, written by `python -m jaxnets.data.fixtures imagenet`).
    ("resnet50", False): ("experiments/resnet50_imagenet.py", [
        "data.batch_size=256", "data.eval_batch_size=256", "data.workers=0"]),
    ("resnet50", True): ("experiments/resnet50_imagenet.py:smoke", [
        "data.batch_size=8", "data.eval_batch_size=8", "model.depth=18",
        "data.options.image_size=32", "train.compute_dtype='float32'"]),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("transformer_lm", "resnet", "resnet50"), required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more config overrides (e.g. data.options.root=DIR for resnet50)")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized check of the script")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args()
    install_process_settings()   # malloc, compilation cache: as `jaxnets train` does
    spec, overrides = SIZES[(args.model, args.tiny)]
    config = apply_overrides(load_config(spec), overrides + args.set + [
        "train.report=False", "train.progress=False"], declared)
    config.cpu_devices = "1"
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(config, workdir)
        it = TrainIterator(trainer.dataset.splits[config.data.train_split], config.data.batch_size, 0,
                           transform=trainer.dataset.train_transform)
        batch = trainer.put_batch(next(it))
        counter = {"i": 0}

        def step():
            trainer.state, metrics = trainer.jit_train_step(trainer.state, batch, counter["i"])
            counter["i"] += 1
            jax.block_until_ready(metrics)

        timing = time_fn(step, warmup=3, runs=args.runs)
        seconds = timing["median_ms"] / 1e3
        per_batch = trainer.task.throughput(trainer.module())
        row = {"name": f"{args.model}{'_tiny' if args.tiny else ''}", **timing,
               "batch": config.data.batch_size, "compute_dtype": config.train.compute_dtype,
               "steps_per_s": 1 / seconds, "examples_per_s": config.data.batch_size / seconds}
        if "tokens" in per_batch:
            row["tokens_per_s"] = per_batch["tokens"] / seconds
        if "flops" in per_batch:
            row["tflops_per_s_per_device"] = per_batch["flops"] / seconds / jax.device_count() / 1e12
            peak = peak_flops_per_device()
            if peak:
                row["mfu"] = row["tflops_per_s_per_device"] * 1e12 / peak
    report("model_step", [row])
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"benchmark": "model_step", "results": [row]}, f, indent=1)


if __name__ == "__main__":
    main()

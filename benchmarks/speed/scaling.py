"""Scaling, measured and on paper.

    python -m benchmarks.scaling [--json] [--steps 8] [--skip-measured]

(a) Measured: steps/s and examples/s of the Transformer LM and ResNet smoke models (the
    experiments' smoke configs) with the one trainer on 1, 2, 4 and 8 forced CPU devices
    (data parallel) and on 2 processes x 2 devices (`jax.distributed` on localhost). Each point
    is a fresh process; the median step time after two warm-up steps. On a 2-core CPU the
    forced devices share two cores, so this measures the runtime's overhead, not a speed-up.
(b) On paper, nothing allocated: per-device bytes of the training state (float32 parameters +
    gradients + Adam's two moments, laid out by the real logical axes and rules through
    `jax.eval_shape`) and per-step collective bytes per device for 1B and 7B TransformerLMs under
    dp, fsdp and fsdp x tensor on 8, 64 and 256 devices, and the largest model of the same
    family whose state fits 80 GB per device. Collectives are ring algorithms: all-reduce moves
    2(n-1)/n of the buffer per device, all-gather and reduce-scatter (n-1)/n. Activations are
    not counted (they depend on batch and remat; see the table's note).
Writes benchmarks/results/scaling.md (table + scaling.png); the last stdout line is the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
CONFIGS = {"transformer_lm": "experiments/transformer_shakespeare.py:smoke",
           "resnet": "experiments/resnet_cifar.py:smoke"}
# Our TransformerLM family (pre-LN, GELU MLP of 4 d, tied 32k vocabulary).
PAPER_MODELS = {"1B": dict(d_model=2048, num_layers=20, num_heads=16),
                "7B": dict(d_model=4096, num_layers=34, num_heads=32)}
VOCAB, SEQ, BATCH_PER_DEVICE, BYTES_PER_PARAM = 32000, 2048, 8, 16   # f32 param + grad + 2 moments
LAYOUTS = {"dp": lambda n: {"data": n, "fsdp": 1, "tensor": 1},
           "fsdp": lambda n: {"data": 1, "fsdp": n, "tensor": 1},
           "fsdp_x_tensor": lambda n: {"data": 1, "fsdp": n // 8, "tensor": 8}}
DEVICE_COUNTS = (8, 64, 256)
HBM = 80e9


# ------------------------------------------------------------------ (a) measured
def worker(model: str, steps: int) -> None:
    """One measurement in this process (devices from XLA_FLAGS, processes from the launcher)."""
    import jax

    from jaxnets.config import apply_overrides, load_config
    from jaxnets.data.pipeline import TrainIterator
    from jaxnets.train.trainer import Trainer
    config = apply_overrides(load_config(CONFIGS[model]), ["train.report=False", "train.progress=False"])
    config.cpu_devices = "1"
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(config, workdir)
        it = TrainIterator(trainer.dataset.splits[config.data.train_split], config.data.batch_size,
                           config.seed, process_index=jax.process_index(),
                           process_count=jax.process_count())
        times = []
        for i in range(steps + 2):
            t = time.perf_counter()
            jax.block_until_ready(trainer.step(next(it), i))
            times.append(time.perf_counter() - t)
        step_s = statistics.median(times[2:])
        if jax.process_index() == 0:
            print("RESULT " + json.dumps({
                "name": f"measured-{model}-{jax.process_count()}p{jax.device_count()}d",
                "model": model, "processes": jax.process_count(), "devices": jax.device_count(),
                "batch": config.data.batch_size, "steps_per_s": 1 / step_s,
                "examples_per_s": config.data.batch_size / step_s}), flush=True)


def measure(model: str, devices: int, processes: int, steps: int) -> dict:
    from jaxnets.parallel.launch import free_port, rank_env
    per_process = devices // processes
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--worker", model, "--steps", str(steps)]
    envs = [rank_env(r, processes, port, per_process) for r in range(processes)]
    if processes == 1:
        envs = [{k: v for k, v in envs[0].items() if not k.startswith("JAXNETS_")}]
    procs = [subprocess.Popen(cmd, env=env, cwd=os.path.dirname(os.path.dirname(RESULTS)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for env in envs]
    outs = [p.communicate(timeout=1200)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{model} on {processes}x{per_process} failed:\n" + outs[0][-3000:])
    line = next(l for l in outs[0].splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# ------------------------------------------------------------------ (b) on paper
def lm_params(d_model: int, num_layers: int, **_) -> int:
    """Closed form of our TransformerLM's parameter count (attention 4d^2+4d, MLP 8d^2+5d,
    two LayerNorms 4d per layer; tied embedding V d; final LayerNorm 2d)."""
    return num_layers * (12 * d_model ** 2 + 13 * d_model) + VOCAB * d_model + 2 * d_model


def abstract_state(size: str):
    """The real model + AdamW state, abstract (shapes and logical names only)."""
    import optax
    from flax import nnx

    from jaxnets.models.transformer import TransformerLM
    from jaxnets.tasks.base import State
    cfg = PAPER_MODELS[size]

    def build():
        model = TransformerLM(VOCAB, d_model=cfg["d_model"], num_layers=cfg["num_layers"],
                              num_heads=cfg["num_heads"], max_len=SEQ, positions="sinusoidal",
                              scan_layers=True, rngs=nnx.Rngs(0))
        return State(model=model, opt=nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param))

    return nnx.split(nnx.eval_shape(build))[1]


def on_paper(size: str, state) -> list[dict]:
    import jax
    import numpy as np
    from flax import nnx

    from jaxnets.parallel import sharding
    from jaxnets.parallel.sharding import DEFAULT_RULES
    params = sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(state, nnx.Param)))
    cfg = PAPER_MODELS[size]
    rows = []
    for layout, axes_for in LAYOUTS.items():
        for n in DEVICE_COUNTS:
            axes = axes_for(n)
            mesh = jax.sharding.AbstractMesh(tuple(axes.values()), tuple(axes))
            layout_rows = sharding.state_layout(mesh, state, DEFAULT_RULES)
            state_bytes = 0.0
            for r in layout_rows:
                split = sharding.shard_count(mesh, r["spec"])
                itemsize = np.dtype(r["dtype"]).itemsize if r["dtype"] else 4
                nbytes = math.prod(r["shape"]) * itemsize / split
                # gradients are laid out like their parameters: count them once more
                state_bytes += nbytes * (2 if r["path"].startswith("model/") else 1)
            f, t = axes["fsdp"], axes["tensor"]
            p_bytes = 4 * params / t
            comm = 2 * (n - 1) / n * p_bytes if layout == "dp" else 3 * (f - 1) / f * p_bytes
            if t > 1:   # Megatron: 2 all-reduces of the layer output forward, 2 backward, per layer
                act = BATCH_PER_DEVICE * SEQ * cfg["d_model"] * 4
                comm += 4 * cfg["num_layers"] * 2 * (t - 1) / t * act
            rows.append({"name": f"paper-{size}-{layout}-{n}", "params": size, "param_count": params,
                         "layout": layout, "mesh": axes, "devices": n,
                         "state_bytes_per_device": int(state_bytes),
                         "collective_bytes_per_step_per_device": int(comm),
                         "fits_80GB": state_bytes < HBM,
                         "largest_fitting_params": largest_fitting(layout, n)})
    return rows


def largest_fitting(layout: str, n: int) -> int:
    """Largest model of the family (d_model = 128 k, num_layers = d_model / 128) whose state
    (16 bytes a parameter, split as the layout splits the big matrices) fits 80 GB."""
    axes = LAYOUTS[layout](n)
    split = 1 if layout == "dp" else axes["fsdp"] * axes["tensor"]
    best, k = 0, 1
    while True:
        d = 128 * k
        p = lm_params(d, d // 128)
        if p * BYTES_PER_PARAM / split > HBM:
            return best
        best, k = p, k + 1


# ------------------------------------------------------------------ report
def write_report(measured: list[dict], paper: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(RESULTS, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for size in PAPER_MODELS:
        for layout in LAYOUTS:
            pts = [r for r in paper if r["params"] == size and r["layout"] == layout]
            axes[0].plot([r["devices"] for r in pts], [r["state_bytes_per_device"] / 1e9 for r in pts],
                         marker="o", label=f"{size} {layout}")
    axes[0].axhline(HBM / 1e9, color="k", ls="--", lw=1, label="80 GB")
    axes[0].set(xscale="log", yscale="log", xlabel="devices", ylabel="state GB per device",
                title="on paper: training state per device")
    axes[0].legend(fontsize=7)
    for model in CONFIGS:
        pts = sorted((r for r in measured if r["model"] == model and r["processes"] == 1),
                     key=lambda r: r["devices"])
        if pts:
            axes[1].plot([r["devices"] for r in pts], [r["examples_per_s"] for r in pts], marker="o",
                         label=model)
    axes[1].set(xlabel="forced CPU devices (one process)", ylabel="examples/s",
                title="measured on this CPU")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "scaling.png"), dpi=110)
    lines = ["# Scaling", "", "Generated by `python -m benchmarks.scaling` (do not edit by hand).", "",
             "![scaling](scaling.png)", "", "## Measured (CPU, forced devices)", "",
             "| model | processes | devices | batch | steps/s | examples/s |", "|---|---|---|---|---|---|"]
    for r in measured:
        lines.append(f"| {r['model']} | {r['processes']} | {r['devices']} | {r['batch']} | "
                     f"{r['steps_per_s']:.2f} | {r['examples_per_s']:.1f} |")
    lines += ["", "## On paper (real logical axes and rules; nothing allocated)", "",
              f"State = f32 parameters + gradients + Adam moments; collectives per step per device "
              f"(ring), tensor-parallel activations at {BATCH_PER_DEVICE} x {SEQ} tokens per device. "
              "Activations are not in the state column.", "",
              "| model | layout | devices | state GB/device | collective GB/step/device | fits 80 GB | largest fitting |",
              "|---|---|---|---|---|---|---|"]
    for r in paper:
        lines.append(f"| {r['params']} ({r['param_count'] / 1e9:.2f}B) | {r['layout']} {r['mesh']} | "
                     f"{r['devices']} | {r['state_bytes_per_device'] / 1e9:.2f} | "
                     f"{r['collective_bytes_per_step_per_device'] / 1e9:.2f} | "
                     f"{'yes' if r['fits_80GB'] else 'no'} | {r['largest_fitting_params'] / 1e9:.1f}B |")
    with open(os.path.join(RESULTS, "scaling.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measured point")
    parser.add_argument("--skip-measured", action="store_true", help="on-paper rows only (seconds)")
    parser.add_argument("--worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps)
    measured = []
    if not args.skip_measured:
        for model in CONFIGS:
            for devices, processes in ((1, 1), (2, 1), (4, 1), (8, 1), (4, 2)):
                row = measure(model, devices, processes, args.steps)
                print(f"{row['name']}: {row['steps_per_s']:.2f} steps/s", flush=True)
                measured.append(row)
    paper = []
    for size in PAPER_MODELS:
        paper += on_paper(size, abstract_state(size))
    write_report(measured, paper)
    from benchmarks.common import report
    from benchmarks.speed.scaling_compiled import load_rows
    # Rows from the compiler (`python -m benchmarks.scaling_compiled` stores them: minutes per
    # row on a CPU host), beside the on-paper ones they check.
    compiled = [{"name": f"compiled-{r['model']}-{r['layout']}-{r['devices']}", **r}
                for r in load_rows() if "params" in r]
    report("scaling", [{**r, "source": "measured"} for r in measured]
           + [{**r, "source": "paper"} for r in paper] + compiled)


if __name__ == "__main__":
    main()

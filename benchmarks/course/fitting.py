"""Under- and overfitting on a small real training set, and what each cure buys.

    python -m benchmarks.fitting [--preset smoke|full] [--json] [--out DIR]

Data: 400 of MNIST-5k's 4,000 training digits (`mnist5k` with `train_size=400`), tested on its
1,000 held-out digits. Model: an MLP with two hidden layers of width w (`jaxnets.models.cnn.MLP`).
1. Capacity sweep: w from tiny to large, same recipe, no regularisation: train error falls to 0
   while test error first falls (underfitting -> right size), then stops improving or rises
   (overfitting); the train/test gap grows with the parameter count.
2. Cures, on the largest width: dropout, augmentation (random 3-pixel shifts), weight decay,
   early stopping (on a separate 400-digit validation split: `val_size=400`, best checkpoint by
   validation loss, `jaxnets.train.best`), and more data (all 4,000 training digits).
Every run goes through the one trainer (`jaxnets.train.Trainer`). Errors are measured in eval
mode on the whole train and test splits at the end (at the best checkpoint for early stopping).
Writes DIR (default benchmarks/results/fitting/): results.json, capacity.png, cures.png.

Measured (smoke, 314 s on the 2-core CPU shared with other jobs, load ~10; rerun 2026-12-02
pinned to one quiet core: 104 s, the same capacity numbers), train/test error:
- capacity: w=1 0.738/0.817 (gap 0.080, underfit), w=4 0.118/0.412 (gap 0.295, the peak near
  the interpolation threshold), w=8 0.003/0.211, w=32 0/0.155, w=128 0/0.137, w=512 0/0.129,
  w=1024 0/0.130 (gap 0.130). Test error does not turn back up with width here (wide nets
  trained by Adam interpolate benignly); the held-out cross-entropy does: 0.64 nats at w=32,
  0.73 at w=1024 (over-confident memorisation), the U the course draws.
- cures on w=1024 (gap 0.130): dropout 0.5 -> 0.121, shifts of up to 3 pixels -> 0.082,
  weight decay 5.0 -> 0.121, early stopping (best validation loss at step 50) -> 0.135 (train
  error is already 0 by then: it lowers the test loss, 0.73 -> 0.54, not the error gap), all
  4,000 digits -> 0.041 (the 2026-12-02 rerun; the first run: 0.119, 0.080, 0.120, 0.135,
  0.042).
The last stdout line is the JSON report, one row per run: name, params, train_error,
test_error, gap (= test_error - train_error), plus test_loss (held-out cross-entropy).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import jax
import numpy as np
from flax import nnx

from benchmarks.common import device_name, report
from jaxnets.train.best import restore_best
from jaxnets.train.defaults import base_config
from jaxnets.train.trainer import Trainer

PRESETS = {
    # 1,000 steps of batch 64 = 160 epochs of the 400 digits: enough for every width >= 32 to
    # reach zero train error, so the gap is the test error of a memorised training set.
    # Width 1 underfits (a one-unit bottleneck); width 4 sits near the interpolation threshold
    # (parameters ~ the 4,000 label constraints): the gap peaks there and shrinks again as width
    # grows (measured; see the module docstring), the "double descent" of modern nets.
    "smoke": {"widths": (1, 4, 8, 32, 128, 512, 1024), "steps": 1000, "eval_every": 50,
              "train_size": 400},
    "full": {"widths": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048), "steps": 3000,
             "eval_every": 100, "train_size": 400},
}
# name -> config overrides applied to the largest model (cure-none has none).
CURES = {
    "none": {},
    "dropout": {"model.dropout": 0.5},
    "augment": {"data.augment": ("crop:3",)},
    # adamw's decoupled decay: each step shrinks weights by lr * wd. wd 1.0 (a pull of exp(-1)
    # over the run) changed nothing measurable (gap 0.131 vs 0.130); 5.0 halves a weight the
    # data does not support every ~140 steps.
    "weight_decay": {"optim.weight_decay": 5.0},
    # Model selection on a held-out validation split, never on the test digits.
    "early_stopping": {"data.options.val_size": 400, "data.eval_split": "val",
                       "train.best_metric": "eval/loss", "train.best_mode": "min",
                       "train.early_stopping_patience": 5, "train.eval_every": 10},
    "more_data": {"data.options.train_size": 0},
}


def make_config(preset: dict, width: int, overrides: dict, seed: int = 0):
    c = base_config()
    c.seed = seed
    c.task = "classification"
    c.model = {"name": "mlp", "hidden": (width, width), "dropout": 0.0}
    c.data.name = "mnist5k"
    c.data.options = {"train_size": preset["train_size"], "val_size": 0}
    c.data.batch_size = 64
    c.data.eval_batch_size = 500
    c.data.prefetch = 0
    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0
    c.train.steps = preset["steps"]
    c.train.log_every = preset["eval_every"]
    c.train.eval_every = preset["eval_every"]
    c.train.checkpoint_every = preset["steps"]
    c.train.keep_checkpoints = 1
    c.train.progress = False
    c.train.report = False
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        with node.unlocked():
            node[leaf] = value
    return c


def read_curve(workdir: str, key: str) -> list[list[float]]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [[r["step"], r[key]] for r in rows if key in r]


def run_one(name: str, config, workroot: str) -> dict:
    workdir = os.path.join(workroot, name)
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.time()
    trainer = Trainer(config, workdir)
    final = trainer.run()
    curve_split = config.data.eval_split
    best_step = None
    if config.train.best_metric:
        best_step = restore_best(trainer)   # the early-stopped model is the best one, not the last
    train_m, test_m = trainer.evaluate("train"), trainer.evaluate("test")
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
        nnx.state(trainer.module().model, nnx.Param)))
    row = {"name": name, "params": params, "train_error": 1.0 - train_m["accuracy"],
           "test_error": 1.0 - test_m["accuracy"], "gap": train_m["accuracy"] - test_m["accuracy"],
           "test_loss": test_m["loss"], "train_loss": train_m["loss"], "steps": final["step"],
           "train_size": trainer.dataset.size("train"), "seconds": time.time() - t0}
    if best_step is not None:
        row["best_step"] = best_step
    curves = {"eval_split": curve_split, "eval_error": [[s, 1 - a] for s, a in read_curve(workdir, "eval/accuracy")],
              "train_loss": read_curve(workdir, "train/loss")}
    print(f"  {name}: params={params} train_error={row['train_error']:.4f} "
          f"test_error={row['test_error']:.4f} gap={row['gap']:.4f} ({row['seconds']:.0f}s)", flush=True)
    return row, curves


def plot(out: str, capacity: list[dict], cures: list[dict], curves: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    p = [r["params"] for r in capacity]
    ax[0].plot(p, [r["train_error"] for r in capacity], "o-", label="train error")
    ax[0].plot(p, [r["test_error"] for r in capacity], "s-", label="test error")
    ax[0].set(xscale="log", xlabel="parameters (MLP, 2 hidden layers of width w)", ylabel="error",
              title=f"Capacity sweep, {capacity[0]['train_size']} training digits")
    for r in capacity:
        ax[0].annotate(r["name"].split("-")[1], (r["params"], r["test_error"]), fontsize=7,
                       textcoords="offset points", xytext=(0, 5))
    ax[0].legend()
    ax[1].plot(p, [r["test_loss"] for r in capacity], "s-", color="C1")
    ax[1].set(xscale="log", xlabel="parameters", ylabel="held-out cross-entropy (nats)",
              title="Test loss: the U of over-confident memorisation")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "capacity.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    names = [r["name"].removeprefix("cure-") for r in cures]
    x = np.arange(len(cures))
    ax[0].bar(x - 0.2, [r["train_error"] for r in cures], 0.4, label="train error")
    ax[0].bar(x + 0.2, [r["test_error"] for r in cures], 0.4, label="test error")
    for i, r in enumerate(cures):
        ax[0].text(i, r["test_error"] + 0.003, f"gap\n{r['gap']:.3f}", ha="center", fontsize=7)
    ax[0].set_xticks(x, names, rotation=20)
    ax[0].set(ylabel="error", title=f"Largest model ({cures[0]['params']:,} params) with each cure")
    ax[0].legend()
    for r in cures:
        c = curves[r["name"]]
        s, e = np.array(c["eval_error"]).T
        label = r["name"].removeprefix("cure-") + (" (val split)" if c["eval_split"] != "test" else "")
        ax[1].plot(s, e, label=label)
    ax[1].set(xlabel="step", ylabel="held-out error during training", ylim=(0, None),
              title="Held-out error curves (test split; early stopping: validation)")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cures.png"), dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    parser.add_argument("--out", default="benchmarks/results/fitting")
    parser.add_argument("--workdir", default="/tmp/jaxnets_fitting")
    parser.add_argument("--only", default="", help="comma-separated run names (debugging)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    os.makedirs(args.out, exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    t0 = time.time()
    rows, curves = [], {}
    runs = [(f"capacity-{w}", w, {}) for w in preset["widths"]]
    runs += [(f"cure-{n}", preset["widths"][-1], o) for n, o in CURES.items()]
    for name, width, overrides in runs:
        if only and name not in only:
            continue
        if name == "cure-none" and f"capacity-{width}" in curves:   # the same run: reuse it
            rows.append(dict(rows[-1] if rows[-1]["name"] == f"capacity-{width}" else
                             next(r for r in rows if r["name"] == f"capacity-{width}"), name=name))
            curves[name] = curves[f"capacity-{width}"]
            continue
        row, curve = run_one(name, make_config(preset, width, overrides), args.workdir)
        rows.append(row)
        curves[name] = curve
    capacity = [r for r in rows if r["name"].startswith("capacity-")]
    cures = [r for r in rows if r["name"].startswith("cure-")]
    if capacity and cures:
        plot(args.out, capacity, cures, curves)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"benchmark": "fitting", "preset": args.preset, "device": device_name(),
                   "seconds": time.time() - t0, "results": rows, "curves": curves}, f, indent=1)
    print(f"total {time.time() - t0:.0f}s", flush=True)
    report("fitting", rows)


if __name__ == "__main__":
    main()

"""The degradation benchmark (He et al. 2016, Fig. 1/6): plain vs residual nets as depth grows.

    python -m benchmarks.degradation --preset smoke   [--out DIR]   # MNIST-5k, 2-core CPU
    python -m benchmarks.degradation --preset cifar10 [--out DIR]   # paper recipe, GPU/TPU

For each depth it trains a plain and a residual net with one recipe (`experiments/resnet_cifar.py`)
through the trainer (`jaxnets.train.Trainer`, sharded over the devices present), then measures:
final train error (eval mode, whole train split), test-error curve, per-layer gradient norms at
initialisation and at the end (also for nets without batch norm at `bn_off_depths`), and lesions
(test accuracy after deleting each single block, Veit et al. 2016). Writes to DIR (default
benchmarks/results/degradation/): results.json, curves.png, grad_norms.png, lesion.png, report.md.
The smoke preset takes about 10 minutes on a 2-core CPU (10m02s measured, 800 steps per net).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnets.config import load_config
from jaxnets.data.pipeline import eval_batches
from jaxnets.models.resnet import layer_norms, param_count
from jaxnets.train.trainer import Trainer

CONFIG = "experiments/resnet_cifar.py"
PRESETS = {
    # lr 0.03: at batch 64 the paper's 0.1 leaves even residual-56 at ~50% train accuracy after
    # 300 steps (measured), which would hide the effect behind an unstable start. 800 steps: at
    # 300 residual-20 vs residual-56 train error was a coin toss (0.0040 vs 0.0058 in one run,
    # 0.0042 vs 0.0035 in another), at 600 it came down to one image (0.0000 vs 0.0002); at 800
    # both are at 0 (test error 0.023 vs 0.015) while plain-56 is at 0.61.
    "smoke": {"arg": "smoke", "depths": (20, 32, 44, 56), "bn_off_depths": (56,), "steps": 800,
              "overrides": {"optim.lr": 0.03}},
    "cifar10": {"arg": "", "depths": (20, 32, 44, 56, 110), "bn_off_depths": (20, 56), "steps": 64_000,
                "overrides": {}},
    # For the end-to-end test: seconds, not a result.
    # Sklearn's 8x8 digits, narrow nets: the end-to-end test (about a minute per pair of nets,
    # most of it compilation).
    "tiny": {"arg": "smoke,width=8", "depths": (8, 14), "bn_off_depths": (14,), "steps": 150,
             "overrides": {"data.name": "digits", "model.stem_stride": 1, "optim.lr": 0.05,
                           "mesh_devices": 1}},
}
# Without batch norm the nets are trained with the same recipe plus global-norm clipping: deep
# unnormalised nets otherwise diverge at these learning rates, and there would be no
# end-of-training gradients to compare.
NO_BN_CLIP = 1.0


def make_config(preset: dict, depth: int, residual: bool, batch_norm: bool, steps: int):
    arg = ",".join(filter(None, [preset["arg"], f"depth={depth}", f"residual={residual}",
                                 f"batch_norm={batch_norm}", f"steps={steps}"]))
    config = load_config(f"{CONFIG}:{arg}")
    for key, value in preset["overrides"].items():
        *section, name = key.split(".")
        (config[section[0]] if section else config)[name] = value
    if not batch_norm:
        config.optim.clip_norm = NO_BN_CLIP
    config.train.progress = False
    config.train.report = False
    return config


def grad_norm_probe(trainer: Trainer, batch: dict):
    """Returns probe() -> per-layer L2 norms of dLoss/dW (stem conv ... head) of the trainer's
    current model on one fixed train-mode batch; compiled once, called at init and at the end."""
    x, labels = trainer.task.inputs(batch), batch["label"]
    graphdef = nnx.split(trainer.module().model)[0]

    @jax.jit
    def grads(state):
        loss_fn = lambda m: trainer.task.loss(m(x, train=True), labels).mean()
        return nnx.grad(loss_fn)(nnx.merge(graphdef, state))   # w.r.t. nnx.Param

    def probe():
        model = trainer.module().model
        return layer_norms(grads(nnx.split(model)[1]), model.layer_paths()).tolist()
    return probe


def lesion_accuracies(trainer: Trainer, split: str) -> list[float]:
    """Test accuracy with each single block deleted (one compiled function, a 0/1 mask)."""
    model = trainer.module().model
    graphdef, state = nnx.split(model)

    @jax.jit
    def correct(state, batch, mask):
        m = nnx.merge(graphdef, state)
        logits = m(trainer.task.inputs(batch), skip_blocks=mask)
        return jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * batch["mask"])

    batches = [jax.tree.map(jnp.asarray, b) for b in
               eval_batches(trainer.dataset.splits[split], trainer.config.data.eval_batch_size)]
    total = sum(float(b["mask"].sum()) for b in batches)
    out = []
    for i in range(model.num_blocks):
        mask = jnp.zeros(model.num_blocks).at[i].set(1.0)
        out.append(sum(float(correct(state, b, mask)) for b in batches) / total)
    return out


def read_curves(workdir: str) -> tuple[list, list]:
    train, test = [], []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "train/accuracy" in row:
                train.append([row["step"], 1.0 - row["train/accuracy"]])
            if "eval/accuracy" in row:
                test.append([row["step"], 1.0 - row["eval/accuracy"]])
    return train, test


def run_one(preset, depth, residual, batch_norm, steps, workroot) -> dict:
    config = make_config(preset, depth, residual, batch_norm, steps)
    workdir = os.path.join(workroot, f"{'res' if residual else 'plain'}{depth}{'' if batch_norm else '_nobn'}")
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.time()
    trainer = Trainer(config, workdir)
    split = trainer.dataset.splits[config.data.train_split]
    probe = {k: jnp.asarray(v[:256]) for k, v in split.items()}   # fixed batch for gradients
    grad_norms = grad_norm_probe(trainer, probe)
    g_init = grad_norms()
    final = trainer.run()
    g_end = grad_norms()
    train_eval = trainer.evaluate(config.data.train_split)
    train_curve, test_curve = read_curves(workdir)
    run = {"depth": depth, "residual": residual, "batch_norm": batch_norm,
           "params": param_count(trainer.module().model), "steps": final["step"],
           "train_error": train_curve, "test_error": test_curve,
           "final_train_error": 1.0 - train_eval["accuracy"],
           "final_test_error": 1.0 - final["metrics"]["eval/accuracy"],
           "grad_norms_init": g_init, "grad_norms_end": g_end,
           "lesion": lesion_accuracies(trainer, config.data.eval_split) if batch_norm else [],
           "seconds": time.time() - t0}
    print(f"{'residual' if residual else 'plain'}-{depth}{'' if batch_norm else ' (no BN)'}: "
          f"train error {run['final_train_error']:.4f}, test error {run['final_test_error']:.4f}, "
          f"{run['seconds']:.0f} s", flush=True)
    return run


# ---------------------------------------------------------------- plots and report
def _label(r):
    return f"{'ResNet' if r['residual'] else 'plain'}-{r['depth']}"


def plot_curves(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    depths = sorted({r["depth"] for r in runs})
    colors = dict(zip(depths, plt.cm.viridis(np.linspace(0, 0.85, len(depths)))))
    for r in (r for r in runs if r["batch_norm"]):
        style = "-" if r["residual"] else "--"
        for ax, key in zip(axes, ("train_error", "test_error")):
            if r[key]:
                steps, err = zip(*r[key])
                ax.plot(steps, 100 * np.asarray(err), style, color=colors[r["depth"]], label=_label(r))
    for ax, title in zip(axes, ("train error (mini-batch, train mode)", "test error")):
        ax.set(title=title, xlabel="step", ylabel="error (%)", ylim=(0, None))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("plain (dashed) vs residual (solid)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_grad_norms(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    deepest = max(r["depth"] for r in runs)
    for row, bn in enumerate((True, False)):
        for col, key in enumerate(("grad_norms_init", "grad_norms_end")):
            ax = axes[row, col]
            for r in runs:
                if r["batch_norm"] == bn and r["depth"] == max(x["depth"] for x in runs
                                                                if x["batch_norm"] == bn):
                    ax.semilogy(r[key], "-" if r["residual"] else "--", marker=".", label=_label(r))
            ax.set(title=f"{'with' if bn else 'without'} batch norm, "
                         f"{'initialisation' if col == 0 else 'end of training'}",
                   xlabel="layer (input -> output)", ylabel="|dL/dW|")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.suptitle(f"per-layer gradient norms (deepest nets; {deepest} layers max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lesion(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lesioned = [r for r in runs if r["lesion"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    depths = sorted({r["depth"] for r in lesioned})
    colors = dict(zip(depths, plt.cm.viridis(np.linspace(0, 0.85, len(depths)))))
    for r in lesioned:
        ax.plot(range(len(r["lesion"])), r["lesion"], "-" if r["residual"] else "--",
                color=colors[r["depth"]], marker=".", label=_label(r))
    ax.set(xlabel="deleted block", ylabel="test accuracy", ylim=(0, 1),
           title="accuracy after deleting one block: residual (solid) vs plain (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def find(runs, depth, residual, bn=True):
    return next((r for r in runs if (r["depth"], r["residual"], r["batch_norm"]) == (depth, residual, bn)), None)


def write_report(results, out):
    runs = results["runs"]
    plot_curves(runs, os.path.join(out, "curves.png"))
    plot_grad_norms(runs, os.path.join(out, "grad_norms.png"))
    plot_lesion(runs, os.path.join(out, "lesion.png"))
    lines = [f"# Degradation: plain vs residual ({results['preset']} preset)", "",
             f"{results['steps']} steps per net, config `{results['config']}` with overrides "
             f"{results['overrides']}, devices {results['devices']}, total {results['seconds']:.0f} s.",
             "Regenerate: `python -m benchmarks.degradation --preset "
             f"{results['preset']}`.", "",
             "| net | BN | params | final train error | final test error | mean lesion acc | "
             "|dL/dW| first/last layer, init | end |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ratio = lambda g: g[0] / g[-1] if g[-1] else float("nan")
        lesion = f"{np.mean(r['lesion']):.3f}" if r["lesion"] else "-"
        lines.append(f"| {_label(r)} | {'yes' if r['batch_norm'] else 'no'} | {r['params']:,} | "
                     f"{r['final_train_error']:.4f} | {r['final_test_error']:.4f} | {lesion} | "
                     f"{ratio(r['grad_norms_init']):.3g} | {ratio(r['grad_norms_end']):.3g} |")
    lo, hi = min(results["depths"]), max(results["depths"])
    lines += ["", "## Claims, checked on these numbers", ""]
    p_lo, p_hi, r_lo, r_hi = find(runs, lo, False), find(runs, hi, False), find(runs, lo, True), find(runs, hi, True)
    if lo < hi and all((p_lo, p_hi, r_lo, r_hi)):
        lines.append(f"- plain-{hi} ends with higher train error than plain-{lo}: "
                     f"{p_hi['final_train_error']:.4f} vs {p_lo['final_train_error']:.4f} -> "
                     f"**{'yes' if p_hi['final_train_error'] > p_lo['final_train_error'] else 'no'}**")
        lines.append(f"- residual-{hi} ends with train error no higher than residual-{lo}: "
                     f"{r_hi['final_train_error']:.4f} vs {r_lo['final_train_error']:.4f} -> "
                     f"**{'yes' if r_hi['final_train_error'] <= r_lo['final_train_error'] else 'no'}**")
        lines.append(f"- deleting one block (depth {hi}): residual keeps mean test accuracy "
                     f"{np.mean(r_hi['lesion']):.3f} (min {min(r_hi['lesion']):.3f}), plain "
                     f"{np.mean(p_hi['lesion']):.3f} (min {min(p_hi['lesion']):.3f}).")
    lines += ["", "Gradient norms: `grad_norms.png` plots |dL/dW| per layer for the deepest nets at "
              "initialisation and after training, with and without batch norm (no-BN runs use "
              f"global-norm clipping {results['no_bn_clip_norm']}). The first/last ratio in the table "
              "is < 1 when gradients shrink towards the input (vanishing) and > 1 when they grow.", "",
              "Figures: `curves.png` (train/test error vs step, plain dashed, residual solid), "
              "`grad_norms.png`, `lesion.png`."]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--out", default="benchmarks/results/degradation")
    ap.add_argument("--steps", type=int, help="override the preset's training steps")
    ap.add_argument("--depths", type=int, nargs="+", help="override the preset's depths")
    ap.add_argument("--bn-off-depths", type=int, nargs="*",
                    help="depths also trained without batch norm (default: the preset's)")
    ap.add_argument("--report-only", action="store_true",
                    help="redraw the figures and report.md from OUT/results.json")
    ap.add_argument("--workdir", help="trainer workdirs (default: OUT/runs, removed at the end)")
    args = ap.parse_args(argv)
    if args.report_only:
        with open(os.path.join(args.out, "results.json")) as f:
            results = json.load(f)
        write_report(results, args.out)
        return results
    preset = dict(PRESETS[args.preset])
    depths = tuple(args.depths or preset["depths"])
    steps = args.steps or preset["steps"]
    bn_off = [d for d in (preset["bn_off_depths"] if args.bn_off_depths is None
                          else args.bn_off_depths) if d in depths]
    os.makedirs(args.out, exist_ok=True)
    workroot = args.workdir or os.path.join(args.out, "runs")
    t0 = time.time()
    runs = [run_one(preset, d, r, True, steps, workroot) for d in depths for r in (False, True)]
    runs += [run_one(preset, d, r, False, steps, workroot)
             for d in bn_off for r in (False, True)]
    if not args.workdir:
        shutil.rmtree(workroot, ignore_errors=True)
    results = {"preset": args.preset, "steps": steps, "depths": list(depths),
               "config": CONFIG, "overrides": preset["overrides"], "no_bn_clip_norm": NO_BN_CLIP,
               "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
               "seconds": time.time() - t0, "runs": runs}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_report(results, args.out)
    print(json.dumps({"benchmark": "degradation", "device": results["devices"],
                      "results": [{"name": f"{'resnet' if r['residual'] else 'plain'}{r['depth']}"
                                           f"{'' if r['batch_norm'] else '_nobn'}",
                                   "final_train_error": r["final_train_error"],
                                   "final_test_error": r["final_test_error"]} for r in runs]}))
    return results


if __name__ == "__main__":
    main()

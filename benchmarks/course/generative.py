"""Sample quality of AE, VAE, GAN and DDPM on MNIST-5k, measured by a jaxnets MNIST classifier.

    python -m benchmarks.generative --preset smoke [--out DIR] [--runs DIR] [--json]

Each model is trained by the jaxnets trainer from its experiment config (experiments/
{ae,vae,gan,ddpm}_mnist.py with the preset as arg) into RUNS/NAME, or restored from there if a
finished run exists (a rerun costs only the sampling). Then `--num-samples` images per model
are scored against held-out real digits by the judge (experiments/mnist_cnn.py:smoke trained
into RUNS/judge):
- frechet: Frechet distance between Gaussian fits of the judge's penultimate features (an FID
  analogue; lower is better). The row "real (training digits)" scores as many real training
  digits: the floor that sample-size noise alone gives.
- confidence: mean max softmax probability; coverage: 1 - TV(predicted-class histogram,
  uniform), 1.0 = balanced, 0.1 = one class; class_accuracy: for class-conditional DDPM.
- neg_elbo (VAE): held-out negative ELBO in nats per image (binarised pixels), with its
  reconstruction and KL terms.
AE samples decode z ~ N(mean, cov) fitted to the training codes (an AE has no prior).
Writes report.md and results.json into DIR (default benchmarks/results/generative/); the last
stdout line is the JSON object. Timings are not the point here; no timing figures are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from benchmarks.common import trained_judge
from jaxnets import images as imlib
from jaxnets.cli import repo_dir
from jaxnets.config import load_config

MODELS = (("ae", "ae_mnist", "AutoEncoder (Gaussian fit to codes)"),
          ("vae", "vae_mnist", "VAE (prior samples)"),
          ("gan", "gan_mnist", "DCGAN"),
          ("ddpm", "ddpm_mnist", "DDPM class-conditional"))


def trained(name: str, experiment: str, preset: str, runs: str):
    from jaxnets.train.trainer import Trainer

    config = load_config(os.path.join(repo_dir("experiments"), f"{experiment}.py") + f":{preset}")
    config.train.report = False      # sampling is done here, on the same footing for all models
    config.train.progress = False
    config.evals = {}                 # the judge scores here, below
    t0 = time.time()
    trainer = Trainer(config, os.path.join(runs, name))
    final = trainer.run()
    print(f"[{name}] trained/restored in {time.time() - t0:.0f}s: "
          + ", ".join(f"{k}={v:.4g}" for k, v in final["metrics"].items() if isinstance(v, float)), flush=True)
    return trainer, final


def samples_for(name: str, trainer, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    state, task = trainer.module(), trainer.task
    rng = jax.random.key(123)
    if name in ("ae", "vae", "gan"):   # the tasks' own samplers (seeds as before the move)
        return task.sample(state, n, seed=123 if name == "vae" else 0), None
    labels = np.repeat(np.arange(10), n // 10)
    # the experiment's own sampler settings and guidance scale, as its report uses them
    return task.sampler_fn(state.ema, n)(task.conditions_for(state.ema, labels), task.guidance, rng), labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="smoke", help="experiment arg, e.g. smoke or '' (full)")
    parser.add_argument("--out", default=os.path.join(repo_dir("benchmarks"), "results", "generative"))
    parser.add_argument("--runs", default="runs/generative_bench", help="trained models (reused)")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--models", default="ae,vae,gan,ddpm")
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = parser.parse_args(argv)
    wanted = args.models.split(",")
    judge = trained_judge(os.path.join(args.runs, "judge"))
    train, heldout = real_digits()
    # the floor: real training digits vs the held-out ones, at the same sample size
    subset = np.random.default_rng(0).choice(len(train), min(args.num_samples, len(train)), replace=False)
    rows = [{"name": "real (training digits)", **judge.score(train[subset], reference=heldout)}]
    for name, experiment, title in MODELS:
        if name not in wanted:
            continue
        trainer, final = trained(name, experiment, args.preset, args.runs)
        images, labels = samples_for(name, trainer, args.num_samples)
        if name == "ddpm":
            t = trainer.task
            title += (f" (guidance {t.guidance:g}, {t.sampler}"
                      + (f" {t.sample_steps} steps, eta {t.eta:g})" if t.sampler == "ddim" else ")"))
        row = {"name": title, **judge.score(images, labels, reference=heldout)}
        if name == "vae":
            m = final["metrics"]
            row.update(neg_elbo=m["eval/neg_elbo"], recon_nll=m["eval/recon_nll"], kl=m["eval/kl"])
        rows.append(row)
        os.makedirs(args.out, exist_ok=True)
        imlib.save_grid(images[:: max(1, len(images) // 100)][:100], os.path.join(args.out, f"{name}_samples.png"),
                        10, title)
    result = {"benchmark": "generative", "device": jax.devices()[0].device_kind, "preset": args.preset,
              "num_samples": args.num_samples, "judge_heldout_accuracy": judge.heldout_accuracy,
              "results": rows}
    write_outputs(args.out, result)
    print(json.dumps(result))


def real_digits() -> tuple[np.ndarray, np.ndarray]:
    from jaxnets.data import load_dataset
    splits = load_dataset("mnist5k").splits
    return tuple(np.asarray(splits[s]["image"], np.float32) / 255.0 for s in ("train", "test"))


def write_outputs(out: str, result: dict) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    cols = ["frechet", "confidence", "coverage", "class_accuracy", "neg_elbo", "recon_nll", "kl"]
    lines = [f"# Generative models on MNIST-5k (preset `{result['preset']}`)", "",
             f"{result['num_samples']} samples per model; judge: jaxnets CNN (experiments/mnist_cnn.py:smoke), "
             f"held-out accuracy {result['judge_heldout_accuracy']:.3f}; Frechet distance in its 128-d "
             "penultimate feature space against the 1,000 held-out digits. "
             "neg_elbo, recon_nll, kl: nats per held-out image.", "",
             "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in result["results"]:
        lines.append(f"| {r['name']} | " + " | ".join(f"{r[c]:.4g}" if c in r else "" for c in cols) + " |")
    lines += [""] + [f"![{n}]({n}_samples.png)" for n, _, _ in MODELS
                     if os.path.exists(os.path.join(out, f"{n}_samples.png"))]
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

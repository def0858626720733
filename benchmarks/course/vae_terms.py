"""Why the VAE's loss has two terms: reconstruction only, KL only, and both (the ELBO).

    python -m benchmarks.vae_terms [--preset smoke|full] [--json] [--out DIR]

The same VAE (experiments/vae_mnist.py, MLP, 2-D latent so its layout can be drawn, Bernoulli
decoder on binarised MNIST-5k) trained three times through the one trainer with
`task_options.recon_weight` / `kl_weight`:
- `recon_only` (kl_weight=0): an autoencoder with noise; codes spread wherever suits the
  decoder, so decoding z ~ N(0, I) lands in regions no training code occupies;
- `kl_only` (recon_weight=0): q(z|x) collapses onto the prior for every digit; the decoder never
  receives a gradient and reconstructions carry no information about the input;
- `both` (the ELBO): codes packed into the prior's disc, organised by digit, so prior samples
  decode to digits.
Numbers on the 1,000 held-out digits: recon NLL and KL in nats (one posterior sample, the task's
eval), neg ELBO (their sum), and the Frechet distance of 1,000 prior samples to held-out digits
in the judge classifier's feature space (jaxnets.evaluators.image_judge.ImageJudge; lower is better).
Writes DIR (default benchmarks/results/vae_terms/): results.json and vae_terms.png (rows:
settings; columns: reconstructions, prior samples, latent codes of held-out digits).

Measured (smoke, 1,500 steps each, 2026-12-02, ~12 min on the loaded 2-core CPU), recon NLL /
KL / prior-sample Frechet: recon_only 146.6 / 30.7 / 212.6 (codes spread to |z| ~ 15, the
prior misses them); kl_only 570.6 / 0.00 / 471.4 (every code at 0, grey reconstructions);
both 143.3 / 6.4 / 152.8 (codes inside the prior's disc, prior samples read as digits).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import jax
import numpy as np

from benchmarks.common import device_name, report, trained_judge
from jaxnets.cli import repo_dir
from jaxnets.config import apply_overrides, load_config
from jaxnets.tasks.common import heldout_images, one_of_each_digit
from jaxnets.train.trainer import Trainer

SETTINGS = {"recon_only": {"kl_weight": 0.0, "recon_weight": 1.0},
            "kl_only": {"kl_weight": 1.0, "recon_weight": 0.0},
            "both": {"kl_weight": 1.0, "recon_weight": 1.0}}
PRESETS = {"smoke": {"steps": 1500}, "full": {"steps": 5000}}


def run_one(name, weights, steps, judge_dir, workroot):
    config = load_config(os.path.join(repo_dir("experiments"), "vae_mnist.py") + ":smoke,latent=2")
    config = apply_overrides(config, [f"task_options.{k}={v}" for k, v in weights.items()] + [
        "task_options.compare_autoencoder=false", "evals.judge.judge_dir=None",
        f"train.steps={steps}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
        "train.report=false", "train.progress=false"])
    workdir = os.path.join(workroot, name)
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.time()
    trainer = Trainer(config, workdir)
    final = trainer.run()
    vae = trainer.module().model
    x, labels = heldout_images(trainer.dataset, config.data.eval_split, 1000)
    x_in = (x > 0.5).astype(np.float32)
    codes = np.asarray(jax.jit(lambda v: vae.encode(v)[0])(x_in))
    decode = jax.jit(vae.mean_image)
    prior = trainer.task.sample(trainer.module(), 1000, seed=0)   # the task's prior sampler
    pick = one_of_each_digit(labels, 2)
    recon = np.asarray(decode(codes[pick]))
    judge = trained_judge(judge_dir)
    scores = judge.score(prior, reference=x)
    m = final["metrics"]
    row = {"name": name, **weights, "recon_nll": m["eval/recon_nll"], "kl": m["eval/kl"],
           "neg_elbo": m["eval/neg_elbo"], "prior_frechet": scores["frechet"],
           "prior_confidence": scores["confidence"], "seconds": time.time() - t0}
    print(f"  {name}: recon_nll={row['recon_nll']:.1f} kl={row['kl']:.2f} "
          f"prior_frechet={row['prior_frechet']:.1f} ({row['seconds']:.0f}s)", flush=True)
    pictures = {"originals": x_in[pick], "recon": recon, "prior": prior[:64], "codes": codes,
                "labels": labels}
    return row, pictures


def tile(images, ncol):
    n, h, w = images.shape[0], images.shape[1], images.shape[2]
    rows = -(-n // ncol)
    out = np.ones((rows * (h + 1), ncol * (w + 1)))
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = im[..., 0]
    return out


def plot(out, rows, pictures):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(13, 4.2 * len(rows)))
    for ax, row in zip(axes, rows):
        p = pictures[row["name"]]
        pairs = np.concatenate([p["originals"][:10], p["recon"][:10], p["originals"][10:20],
                                p["recon"][10:20]])
        ax[0].imshow(tile(pairs, 10), cmap="gray", vmin=0, vmax=1)
        ax[0].set_title(f"{row['name']}: held-out digits / reconstructions\n"
                        f"recon NLL {row['recon_nll']:.1f} nats, KL {row['kl']:.2f} nats")
        ax[1].imshow(tile(p["prior"], 8), cmap="gray", vmin=0, vmax=1)
        ax[1].set_title(f"decoded z ~ N(0, I)\nFrechet to held-out digits {row['prior_frechet']:.1f}")
        sc = ax[2].scatter(p["codes"][:, 0], p["codes"][:, 1], c=p["labels"], cmap="tab10", s=4)
        ax[2].add_patch(plt.Circle((0, 0), 2.0, fill=False, ls="--", color="k"))
        ax[2].set_title("posterior means of 1,000 held-out digits\n(dashed: the prior's 2-sigma circle)")
        ax[2].set_aspect("equal", adjustable="datalim")
        for a in ax[:2]:
            a.axis("off")
    fig.colorbar(sc, ax=axes[:, 2].tolist(), ticks=range(10), label="digit")
    fig.savefig(os.path.join(out, "vae_terms.png"), dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    parser.add_argument("--out", default="benchmarks/results/vae_terms")
    parser.add_argument("--workdir", default="/tmp/jaxnets_vae_terms")
    parser.add_argument("--judge_dir", default="runs/mnist_judge", help="trained on first use")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    rows, pictures = [], {}
    for name, weights in SETTINGS.items():
        row, pics = run_one(name, weights, PRESETS[args.preset]["steps"], args.judge_dir, args.workdir)
        rows.append(row)
        pictures[name] = pics
    plot(args.out, rows, pictures)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"benchmark": "vae_terms", "preset": args.preset, "device": device_name(),
                   "seconds": time.time() - t0, "results": rows}, f, indent=1)
    report("vae_terms", rows)


if __name__ == "__main__":
    main()

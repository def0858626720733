"""DCGAN on MNIST-5k (4,000 real training digits): alternating D and G updates, two Adam optimizers.

Command (smoke; the first run also trains the judge classifier of experiments/mnist_cnn.py:smoke
into runs/mnist_judge, about 1 minute; `judge_dir=DIR` puts it elsewhere):
    jaxnets train --config experiments/gan_mnist.py:smoke --workdir runs/gan_mnist
Runtime: 2m05s wall on the 2-core CPU pinned to one core (`taskset -c 1`; other work on
the other core), measured 2026-11-28: 2,000 steps at 18 steps/s plus the report.
Measured (smoke, 2,000 steps, 32 channels): samples.png shows digit-like strokes, many not yet
legible; train/d_real 0.63 and train/d_fake 0.37 at the end (near the 1/2 equilibrium, D does
not win outright), eval/d_real_heldout 0.63; the judge scores 1,000 samples
eval/samples_confidence 0.74, eval/samples_coverage 0.825, eval/samples_frechet 83 (1,000 real
training digits score 5.1 against the same held-out set).
Options: `minimax` (the saturating generator loss log(1 - D(G(z))) instead of -log D(G(z))).
Full: drop `smoke` (6,000 steps, 64 channels).
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    smoke = bool(args.get("smoke"))
    c = base_config()
    c.task = "gan"
    width = 32 if smoke else 64
    c.model = {"name": "dcgan_generator", "latent_dim": 64, "channels": width}
    c.model_d = {"name": "dcgan_discriminator", "channels": width, "dropout": 0.3}
    c.task_options = {"generator_loss": "minimax" if args.get("minimax") else "non_saturating",
                      "judge_dir": args.get("judge_dir", "runs/mnist_judge")}
    c.data.name = "mnist5k"
    c.data.batch_size = 64
    c.data.eval_batch_size = 512
    c.optim.name = "adam"          # the DCGAN paper's settings for both players
    c.optim.lr = 2e-4
    c.optim.b1 = 0.5
    c.optim_d = c.optim.copy_and_resolve_references()
    c.train.steps = 2000 if smoke else 6000
    c.train.log_every = 100
    c.train.eval_every = c.train.steps
    c.train.checkpoint_every = c.train.steps
    return c

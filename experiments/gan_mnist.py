"""DCGAN on MNIST-5k: alternating discriminator and generator updates, two Adam optimizers.

    jaxnets train --config experiments/gan_mnist.py:smoke --workdir runs/gan_mnist
Expect samples.png with digit-like strokes and train/d_real near 0.6 (no side wins outright);
the judge (trained into runs/mnist_judge on first use) scores them (eval/samples_*).
Options: `minimax` (saturating generator loss); full: drop `smoke`.
Measured figures: benchmarks/results/experiment_notes.md.
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
    c.task_options = {"generator_loss": "minimax" if args.get("minimax") else "non_saturating"}
    # The image judge (jaxnets/evaluators) scores samples at the end; trained first if missing.
    c.evals = {"judge": {"kind": "image_judge", "every": 0,
                         "judge_dir": args.get("judge_dir", "runs/mnist_judge")}}
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

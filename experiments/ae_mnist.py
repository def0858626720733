"""AutoEncoder on MNIST-5k (4,000 train / 1,000 held-out real digits), loss ||x - g(f(x))||^2.

    jaxnets train --config experiments/ae_mnist.py:smoke --workdir runs/ae_mnist
Expect held-out eval/recon_sse about 12 per image (16-d latent); reconstructions.png and
interpolation.png in the workdir. Options: `conv`, `latent=2` (adds latent_map.png); full: drop
`smoke`. Measured figures: benchmarks/results/experiment_notes.md.
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    c = base_config()
    c.task = "autoencoder"
    c.model = {"name": "autoencoder", "arch": "conv" if args.get("conv") else "mlp",
               "latent_dim": args.get("latent", 16)}
    c.data.name = "mnist5k"
    c.data.batch_size = 128
    c.data.eval_batch_size = 512
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.train.steps = 600 if args.get("smoke") else 3000
    c.train.log_every = 100
    c.train.eval_every = c.train.steps
    c.train.checkpoint_every = c.train.steps
    return c

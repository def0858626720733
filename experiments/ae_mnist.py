"""AutoEncoder on MNIST-5k (4,000 train / 1,000 held-out real digits): loss sum ||x - g(f(x))||^2.

Command (smoke; measured 27 s wall on a loaded 2-core CPU):
    jaxnets train --config experiments/ae_mnist.py:smoke --workdir runs/ae_mnist
Expected (measured 2026-11-28): held-out eval/recon_sse 12.3 per image (eval/recon_mse 0.0157)
with a 16-d latent; reconstructions.png shows recognisable digits, interpolation.png shows that the
straight line between two codes passes through blurry overlays, not through digits.
Options (comma separated after the colon): `conv` for the convolutional AE, `latent=2` for a
2-D latent (also writes latent_map.png; compare with experiments/vae_mnist.py:smoke,latent=2).
Full: drop `smoke` (3,000 steps, about 5x the smoke).
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

"""VAE on MNIST-5k (4,000 train / 1,000 held-out real digits), trained next to a plain AutoEncoder
of the same architecture so that report.md shows their latent spaces side by side.

Command (smoke, about 2-4 minutes on a 2-core CPU; the first run also trains the judge
classifier of experiments/mnist_cnn.py:smoke into runs/mnist_judge, about 1 minute):
    jaxnets train --config experiments/vae_mnist.py:smoke --workdir runs/vae_mnist
Expected (16-d latent, Bernoulli decoder on binarised pixels; measured 2026-11-28, 1m34s on a
loaded 2-core CPU once the judge existed): held-out eval/neg_elbo 101.7 nats = eval/recon_nll
76.2 + eval/kl 25.5; the judge's confidence on decoded interpolation midpoints is higher for
the VAE (eval/vae_interpolation_confidence 0.89) than for the AE (0.86); prior samples
eval/prior_samples_frechet 70, confidence 0.82.
2-D latent (the latent-space picture):
    jaxnets train --config experiments/vae_mnist.py:smoke,latent=2 --workdir runs/vae_mnist_2d
Measured: neg_elbo 149.7 = recon_nll 143.4 + kl 6.4. latent_codes.png shows the AE's codes as
elongated class streaks over an arbitrary range and the VAE's packed into the N(0, I) disc;
latent_map.png decodes a 15x15 grid over each. At this length the judge does not rate the
VAE map cells more digit-like (confidence AE 0.88, VAE 0.86): the picture, not the number,
carries the point here, and the AE map needs its codes' bounding box to be drawn at all.
Options: `conv`, `gaussian` (Gaussian decoder on grey levels: ELBO is then a density), `latent=N`.
Full: drop `smoke` (5,000 steps).
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    c = base_config()
    c.task = "vae"
    c.model = {"name": "vae", "arch": "conv" if args.get("conv") else "mlp",
               "latent_dim": args.get("latent", 16),
               "likelihood": "gaussian" if args.get("gaussian") else "bernoulli"}
    c.task_options = {"compare_autoencoder": True, "judge_dir": args.get("judge_dir", "runs/mnist_judge")}
    c.data.name = "mnist5k"
    c.data.batch_size = 128
    c.data.eval_batch_size = 512
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.train.steps = 1500 if args.get("smoke") else 5000
    c.train.log_every = 100
    c.train.eval_every = c.train.steps
    c.train.checkpoint_every = c.train.steps
    return c

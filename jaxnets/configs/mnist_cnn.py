"""A small CNN with dropout on MNIST-5k: experiments/mnist_cnn.py, and (smoke preset) the
classifier the image judge (`jaxnets.evaluators.image_judge`) scores generated digits with. Lives in the package so
that an installed wheel can build the judge without a clone."""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    c = base_config()
    # On CPU: one single-threaded device per core, the batch sharded over them (convnets
    # gain; see jaxnets.platform.devices.auto_cpu_devices). Ignored where a GPU/TPU is present.
    c.cpu_devices = "auto"
    c.task = "classification"
    c.model = {"name": "cnn", "features": (32, 64), "hidden": 128, "dropout": 0.5}
    c.data.name = "mnist5k"
    c.data.batch_size = 128
    c.data.eval_batch_size = 512
    c.optim.name = "adamw"
    c.optim.lr = 2e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 1e-4
    c.train.steps = 300 if args.get("smoke") else 1500
    c.train.log_every = 50
    c.train.eval_every = 150 if args.get("smoke") else 500
    c.train.checkpoint_every = 150 if args.get("smoke") else 500
    return c

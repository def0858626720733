"""Small configs shared by the trainer tests: tiny models on sklearn's 8x8 digits (offline)."""
import os
import subprocess
import sys

from jaxnets.train.defaults import base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(steps=20, model="cnn", **train):
    c = base_config()
    c.data.name = "digits"
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.data.prefetch = 0
    if model == "cnn":
        c.model = {"name": "cnn", "features": (8, 16), "hidden": 32, "dropout": 0.25}
    else:
        c.model = {"name": "mlp", "hidden": (32,), "dropout": 0.0}
    c.optim.lr = 3e-3
    c.train.steps = steps
    c.train.log_every = 1
    c.train.eval_every = steps
    c.train.checkpoint_every = steps
    c.train.progress = False
    for k, v in train.items():
        c.train[k] = v
    return c


def run_cli(*args, env_extra=None, **kw):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "jaxnets.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, **kw)

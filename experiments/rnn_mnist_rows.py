"""Sequence classification: an LSTM reads each MNIST-5k digit row by row (28 steps of 28 pixels)
and classifies it from its final state (the `classification` task, unchanged).

    jaxnets train --config experiments/rnn_mnist_rows.py:smoke --workdir runs/rnn_mnist_rows
Expect held-out eval/accuracy about 0.95 (full, bidirectional: about 0.96).
Other cells: --config.model.cell=gru | rnn.
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    smoke = args.get("smoke", False)
    c = base_config()
    c.task = "classification"
    c.task_options = {"input_key": "image"}
    c.data.name = "mnist5k"
    c.data.batch_size = 128
    c.data.eval_batch_size = 500
    c.model = {"name": "rnn_classifier", "cell": "lstm", "hidden": 128,
               "bidirectional": not smoke, "pooling": "last"}
    c.optim.name = "adam"
    c.optim.lr = 3e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 50
    c.optim.clip_norm = 1.0
    c.train.steps = 400 if smoke else 1500
    c.train.log_every = 50
    c.train.eval_every = c.train.steps if smoke else 500
    c.train.checkpoint_every = c.train.steps if smoke else 500
    return c

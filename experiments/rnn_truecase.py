"""Sequence labelling: a bidirectional LSTM tagger restores capital letters in lower-cased
Shakespeare (one label per character). About 9% of characters are capitals: watch
eval/f1 and eval/macro_f1, not only accuracy.

    jaxnets train --config experiments/rnn_truecase.py:smoke --workdir runs/rnn_truecase
Expect held-out eval/accuracy about 0.97 and eval/macro_f1 about 0.9.
Unidirectional: --config.model.bidirectional=False. Measured figures: benchmarks/results/experiment_notes.md.
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    smoke = args.get("smoke", False)
    c = base_config()
    c.task = "sequence_labeling"
    c.data.name = "truecase"
    c.data.options = {"seq_len": 128, "max_train": 20000 if smoke else None}
    c.data.batch_size = 64
    c.data.eval_batch_size = 256
    c.model = {"name": "rnn_tagger", "cell": "lstm", "embed_dim": 32, "hidden": 128,
               "num_layers": 1 if smoke else 2, "bidirectional": True, "dropout": 0.0 if smoke else 0.1}
    c.optim.name = "adam"
    c.optim.lr = 3e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 50
    c.optim.clip_norm = 1.0
    c.train.steps = 400 if smoke else 3000
    c.train.log_every = 50
    c.train.eval_every = c.train.steps if smoke else 1000
    c.train.checkpoint_every = c.train.steps if smoke else 1000
    return c

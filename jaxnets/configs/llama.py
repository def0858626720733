"""Llama-style decoder LMs (RMSNorm, rotary positions, SwiGLU, grouped-query attention) from
jaxnets' own Transformer modules: `experiments/lm_1b.py`, `experiments/lm_7b.py` and the
compiled rows of `benchmarks.scaling` (which vary width and depth) all build them here.

Full sizes compute in bfloat16 with float32 parameters and Adam state, scan their layers and
rematerialise each (`model.remat_policy`: none | full | dots_saveable). They are for
accelerators: `jaxnets compile --target tpu:v5p-64` checks one fits before it is run. The
`smoke` arg keeps the structure at a size that trains on a CPU in about a minute, in float32
(bfloat16 matmuls are slow on CPUs), on Shakespeare's characters.
"""
from __future__ import annotations

from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config

# name: (d_model, num_layers, num_heads, num_kv_heads, d_ff). 7B: Llama-3-8B's layer shapes
# with a 32k vocabulary (7.2 B parameters); 1B: Llama-3.2-1B's (1.1 B).
SIZES = {"7B": (4096, 32, 32, 8, 14336), "1B": (2048, 16, 32, 8, 8192),
         "smoke": (128, 2, 4, 2, 384)}
VOCAB = 32000
SEQ_LEN = 2048


def llama_model(d_model, num_layers, num_heads, num_kv_heads, d_ff, *, vocab_size=VOCAB,
                remat_policy="full") -> dict:
    model = {"name": "transformer_lm", "d_model": d_model, "num_layers": num_layers,
             "num_heads": num_heads, "num_kv_heads": num_kv_heads, "d_ff": d_ff,
             "positions": "rotary", "norm": "rms", "mlp": "swiglu", "use_bias": False,
             "tie_output": False, "dropout": 0.0, "scan_layers": True,
             "remat_policy": remat_policy}
    if vocab_size:
        model["vocab_size"] = vocab_size
    return model


def llama_config(size: str, arg=None):
    args = parse_arg(arg)
    smoke = args.get("smoke", False)
    c = base_config()
    c.task = "language_model"
    c.task_options = {"sample_prompt": "ROMEO:", "sample_length": 200 if smoke else 0,
                      "sample_temperature": 0.8}
    c.data.name = "shakespeare"
    c.data.options = {"seq_len": 128 if smoke else SEQ_LEN}
    # The vocabulary of a tokenised corpus for the full sizes (the characters use 65 ids of
    # it); the smoke model takes the dataset's own.
    c.model = llama_model(*SIZES["smoke" if smoke else size], vocab_size=None if smoke else VOCAB)
    if smoke:
        c.data.batch_size, c.data.eval_batch_size = 32, 256
        c.train.steps, c.train.log_every = 300, 50
        c.optim.lr, c.optim.warmup_steps = 3e-3, 30
    else:
        # 1,024 sequences of 2,048 tokens (2 M tokens) a step: 16 a chip on 64 chips.
        c.data.batch_size = c.data.eval_batch_size = 1024
        c.train.compute_dtype = "bfloat16"
        c.train.steps, c.train.log_every = 10000, 10
        c.optim.lr, c.optim.warmup_steps = 3e-4, 1000
        c.mesh = {"data": 1, "fsdp": -1, "tensor": 1}   # FSDP over every chip
    c.train.eval_every = c.train.checkpoint_every = c.train.steps if smoke else 1000
    c.optim.name, c.optim.schedule = "adamw", "warmup_cosine"
    c.optim.b2, c.optim.weight_decay, c.optim.clip_norm = 0.95, 0.1, 1.0
    return c

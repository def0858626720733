"""Decoder-only Transformer LM on a flat token file (uint16/uint32, memory-mapped, never loaded).

    jaxnets train --config experiments/lm_tokens.py --config.data.options.path=/data/tokens.bin --config.data.options.vocab_size=50257 --workdir runs/lm

A real corpus: tokenise it once into one flat file of token ids (e.g. GPT-2's tokenizer gives
uint16 files, as nanoGPT's and llm.c's `*.bin` shards after their header), then point
data.options.path at it; data.options.dtype=uint32 for vocabularies above 65,536. Full
(default arg): 12 layers x 768 (GPT-2 small shape), seq_len 1024, global batch 256 windows,
AdamW 6e-4 with warm-up + cosine, bf16 compute; on a cluster use the mesh of docs/data.md
(FSDP over hosts: --config.mesh.fsdp=-1 --config.mesh.data=1).

Smoke (`:smoke`, CPU, a minute): a small model on a fixture file of Shakespeare characters,
    python -m jaxnets.data.fixtures tokens --out /tmp/tokens.bin --tokens 1000000
    jaxnets train --config experiments/lm_tokens.py:smoke --config.data.options.path=/tmp/tokens.bin --workdir runs/lm_smoke
50 steps of 16 windows of 128 tokens; the process's memory stays flat however large the file
(final.json: host_rss_peak_bytes).
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    smoke = bool(args.get("smoke"))
    c = base_config()
    c.task = "language_model"
    c.task_options = {"sample_prompt": "ROMEO:", "sample_length": 200 if smoke else 0,
                      "sample_temperature": 0.8}
    seq_len = args.get("seq_len", 128 if smoke else 1024)
    c.data.name = "token_file"
    c.data.options = {"path": "", "seq_len": seq_len, "dtype": "", "vocab_size": 0,
                      "test_windows": 64 if smoke else 512}
    c.data.batch_size = args.get("batch", 16 if smoke else 256)
    c.data.eval_batch_size = 64 if smoke else 256
    c.model = {"name": "transformer_lm", "d_model": 128 if smoke else 768,
               "num_heads": 4 if smoke else 12, "num_layers": 2 if smoke else 12,
               "dropout": 0.0, "positions": "learned", "max_len": seq_len,
               "activation": "gelu", "scan_layers": not smoke}
    c.optim.name = "adamw"
    c.optim.lr = 3e-3 if smoke else 6e-4
    c.optim.b2 = 0.95
    c.optim.schedule = "warmup_cosine"
    c.optim.weight_decay = 0.1
    c.optim.clip_norm = 1.0
    steps = args.get("steps", 50 if smoke else 100_000)
    c.optim.warmup_steps = 10 if smoke else 2000
    c.train.steps = steps
    c.train.log_every = 10 if smoke else 100
    c.train.eval_every = steps if smoke else 2000
    c.train.checkpoint_every = steps if smoke else 2000
    if not smoke:
        c.train.compute_dtype = "bfloat16"
    return c

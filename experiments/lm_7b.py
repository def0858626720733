"""A Llama-style 7B decoder (7.2 B parameters: RMSNorm, rotary, SwiGLU, 8 KV heads for 32 query
heads; jaxnets/configs/llama.py), bf16 compute, scanned and rematerialised layers, FSDP.

    jaxnets compile --config experiments/lm_7b.py --target tpu:v5p-64 --config.mesh.fsdp=64 --config.mesh.data=1
reports `fits: True`; `--config.mesh.fsdp=1 --config.mesh.data=64` (every chip holds the
whole state) or `--config.model.remat_policy=none` (every layer keeps its activations)
reports `fits: False`. The same structure, small, trains on a CPU in about a minute:
    jaxnets train --config experiments/lm_7b.py:smoke --workdir runs/lm_7b_smoke
Measured figures: benchmarks/results/scaling.md.
"""
from jaxnets.configs.llama import llama_config


def get_config(arg=None):
    return llama_config("7B", arg)

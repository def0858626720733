"""A Llama-style 1B decoder (1.1 B parameters: Llama-3.2-1B's layer shapes with a 32k
vocabulary; jaxnets/configs/llama.py), bf16 compute, scanned and rematerialised layers, FSDP.

    jaxnets compile --config experiments/lm_1b.py --target tpu:v5p-8 --config.mesh.fsdp=8
    jaxnets train --config experiments/lm_1b.py:smoke --workdir runs/lm_1b_smoke   (CPU, ~1 min)
Measured figures: benchmarks/results/scaling.md.
"""
from jaxnets.configs.llama import llama_config


def get_config(arg=None):
    return llama_config("1B", arg)

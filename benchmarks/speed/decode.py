"""Language-model sampling: KV cache vs rerunning the context window for every token.

    python -m benchmarks.decode [--json] [--length 300] [--runs 3]

The model is the transformer_shakespeare smoke size (3 layers x 128, 4 heads, 128-token
context, vocabulary 65) with random weights: speed does not depend on training. Both
samplers draw the same tokens while the text fits the context (tests/test_decoding.py);
the cached one feeds one token per step, the window one reruns up to 128 tokens per step.
Timings exclude compilation (one warm-up call each); the row reports the median of `runs`.
"""
from __future__ import annotations

import argparse

from flax import nnx

from benchmarks.common import report, time_fn
from jaxnets.models.transformer import TransformerLM
from jaxnets.tasks.language_model import sample_cached, sample_window


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="(the JSON line is always last)")
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    lm = TransformerLM(65, d_model=128, num_heads=4, num_layers=3, dropout=0.0,
                       positions="sinusoidal", max_len=256, rngs=nnx.Rngs(0))
    prompt = [18, 27, 25, 17, 27, 10]          # "ROMEO:" in the Shakespeare vocabulary
    row = {"name": f"lm_sample_{args.length}_tokens", "length": args.length,
           "context": args.context}
    for label, sampler in (("cached", sample_cached), ("window", sample_window)):
        timing = time_fn(lambda: sampler(lm, prompt, args.length, 0.8, args.context),
                         warmup=1, runs=args.runs)
        row[f"{label}_ms"] = timing["median_ms"]
    row["speedup"] = row["window_ms"] / row["cached_ms"]
    row["tokens_per_s_cached"] = 1e3 * args.length / row["cached_ms"]
    report("decode", [row])


if __name__ == "__main__":
    main()

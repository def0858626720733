"""PyTorch CPU attention peer for benchmarks/speed/attention.py: F.scaled_dot_product_attention
(its fused CPU flash kernel), causal, forward and forward+backward, float32.

Runs in the separate peers venv, never imported by jaxnets:
    /tmp/peers/bin/python benchmarks/peers/torch_attention.py --shape smoke=32,128,4,32 --json
q, k and v are made [B, T, H, D] and handed to SDPA as [B, H, T, D] views, as the Transformer
peer (torch_transformer_lm.py) and jaxnets' own layer both start from [B, T, H, D]. The
backward is that of sum(out * dO) with respect to q, k and v. Last stdout line: one JSON object.
"""
import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F


def median_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", action="append", required=True, metavar="NAME=B,T,H,D")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    results = []
    for spec in a.shape:
        name, dims = spec.split("=")
        b, t, h, d = (int(x) for x in dims.split(","))
        q, k, v, do = (torch.randn(b, t, h, d).transpose(1, 2) for _ in range(4))

        def forward():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=True)

        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))

        def forward_backward():
            out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True)
            torch.autograd.grad((out * do).sum(), (qg, kg, vg))

        results.append({"name": name, "fwd_ms": median_ms(forward, a.warmup, a.iters),
                        "fwd_bwd_ms": median_ms(forward_backward, a.warmup, a.iters)})
    print(json.dumps({"benchmark": "torch_attention",
                      "device": f"cpu torch {torch.__version__} threads={torch.get_num_threads()} "
                                f"{platform.machine()}", "results": results}))


if __name__ == "__main__":
    main()

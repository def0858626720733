"""PyTorch CPU GRU peer for benchmarks/speed/lstm.py (same protocol as ../shared/peers/torch_lstm.py).

Runs in the separate peers venv, never imported by jaxnets:
    /tmp/peers/bin/python benchmarks/results/lstm_peer_torch_gru.py --json
"""
import argparse
import json
import platform
import statistics
import time

import torch


def bench(fn, warm=3, n=15):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.parse_args()
    torch.manual_seed(0)
    results = []
    for B, T, D, H in [(64, 128, 256, 256), (16, 1024, 128, 128)]:
        gru = torch.nn.GRU(D, H, batch_first=True)
        x = torch.randn(B, T, D)

        def fwd():
            with torch.no_grad():
                gru(x)

        def fwd_bwd():
            gru.zero_grad(set_to_none=True)
            y, _ = gru(x)
            y.square().mean().backward()

        results.append({"name": f"gru_b{B}_t{T}_d{D}_h{H}",
                        "fwd_ms": bench(fwd), "fwd_bwd_ms": bench(fwd_bwd)})
    out = {"benchmark": "gru", "device": f"cpu torch {torch.__version__} threads={torch.get_num_threads()} {platform.machine()}",
           "results": results}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

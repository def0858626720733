"""PyTorch CPU peer for benchmarks/speed/conv_filter_grad.py: the weight gradient of a 3x3,
stride-1, padding-1 convolution, float32, on one thread.

Runs in the separate peers venv, never imported by jaxnets:
    /tmp/peers/bin/python benchmarks/peers/torch_conv_filter_grad.py --shape 32x32x16->16=64,32,32,16,16 --json
The call is the one autograd makes for a convolution whose input needs no gradient:
`aten.convolution_backward` with output_mask (False, True, False), i.e. oneDNN's weight-gradient
primitive. Tensors are channels_last (the NHWC bytes jaxnets' kernel reads; oneDNN's preferred
layout on CPU, and the ResNet peer's). `torch.set_num_threads(1)`: the jaxnets side runs each
call on one thread too (the per-core devices' setting). Reported per shape: median process CPU ms
and wall ms per call. Last stdout line: one JSON object.
"""
import argparse
import json
import platform
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", action="append", required=True, metavar="NAME=B,H,W,C,O")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    results = []
    for spec in a.shape:
        name, dims = spec.split("=")
        b, h, w, c, o = (int(x) for x in dims.split(","))
        x = torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last)
        g = torch.randn(b, o, h, w).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(o, c, 3, 3).contiguous(memory_format=torch.channels_last)

        def filter_grad():
            return torch.ops.aten.convolution_backward(
                g, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False])[1]

        for _ in range(a.warmup):
            filter_grad()
        cpu, wall = [], []
        for _ in range(a.iters):
            t, c0 = time.perf_counter(), time.process_time()
            filter_grad()
            wall.append((time.perf_counter() - t) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
        results.append({"name": name, "cpu_ms": statistics.median(cpu), "wall_ms": statistics.median(wall)})
    print(json.dumps({"benchmark": "torch_conv_filter_grad",
                      "device": f"cpu torch {torch.__version__} threads={torch.get_num_threads()} "
                                f"{platform.machine()}", "results": results}))


if __name__ == "__main__":
    main()

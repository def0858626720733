"""Does XLA:CPU use the CPU's bf16 units? A bf16 matmul and 3x3 convolution against float32,
under each XLA:CPU option of the pinned jax that could route them to a bf16 kernel.

    python -m benchmarks.bf16_units [--json] [--out FILE]

Each option set runs in its own process (XLA reads XLA_FLAGS once), single-threaded, and
reports GFLOP/s per CPU-second for float32 and bfloat16 and whether the compiled program
computes the bf16 op in float32 (`bf16_upcast`: `convert` to f32 around the dot/convolution in
the optimised HLO). On a CPU with AVX512-BF16 or AMX a bf16 kernel would run at about twice
the float32 rate (benchmarks.peak); an upcast one runs at the float32 rate plus the converts.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

OPTION_SETS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
}


def probe(n: int = 1024, iters: int = 15) -> list[dict]:
    """In this process: GFLOP/s per CPU-second of a [n, n] matmul and a 3x3 conv, f32 and bf16."""
    import jax
    import jax.numpy as jnp
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    work = {"matmul": (lambda a, b: a @ b, lambda dt: (jnp.ones((n, n), dt), jnp.ones((n, n), dt)), 2 * n ** 3),
            "conv3x3": (conv, lambda dt: (jnp.ones((32, 32, 32, 64), dt), jnp.ones((3, 3, 64, 64), dt)),
                        2 * 32 * 32 * 32 * 9 * 64 * 64)}
    rows = []
    for name, (fn, inputs, flops) in work.items():
        row = {"name": name}
        for dt in (jnp.float32, jnp.bfloat16):
            args = inputs(dt)
            compiled = jax.jit(fn).lower(*args).compile()
            compiled(*args).block_until_ready()
            times = []
            for _ in range(iters):
                t = time.process_time()
                compiled(*args).block_until_ready()
                times.append(time.process_time() - t)
            label = jnp.dtype(dt).name
            row[f"{label}_gflops_per_cpu_s"] = flops / statistics.median(times) / 1e9
            if dt == jnp.bfloat16:
                hlo = compiled.as_text()
                row["bf16_upcast"] = "convert(" in hlo and "f32[" in hlo
        row["bf16_over_f32_speed"] = row["bfloat16_gflops_per_cpu_s"] / row["float32_gflops_per_cpu_s"]
        rows.append(row)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", help="also write the report (with machine and date) to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(probe()))
        return
    from benchmarks.common import full_report
    from benchmarks.peak import cpu_peak
    per_core = cpu_peak()
    results = []
    for option, flags in OPTION_SETS.items():
        env = {**os.environ, "XLA_FLAGS": f"{flags} --xla_cpu_multi_thread_eigen=false".strip()}
        out = subprocess.run([sys.executable, "-m", "benchmarks.speed.bf16_units", "--child"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        for row in json.loads(out):
            core_f32 = (per_core.get("fp32_flops_per_s") or 0) / per_core["cores"]
            core_bf16 = (per_core.get("bf16_flops_per_s") or 0) / per_core["cores"]
            row = {**row, "name": f"{option}_{row['name']}", "xla_flags": flags}
            if core_f32:
                row["float32_fraction_of_core_peak"] = row["float32_gflops_per_cpu_s"] * 1e9 / core_f32
            if core_bf16:
                row["bfloat16_fraction_of_core_bf16_peak"] = row["bfloat16_gflops_per_cpu_s"] * 1e9 / core_bf16
            results.append(row)
            print(f"{row['name']}: f32 {row['float32_gflops_per_cpu_s']:.0f}, bf16 "
                  f"{row['bfloat16_gflops_per_cpu_s']:.0f} GFLOP/s per CPU-s, upcast {row['bf16_upcast']}",
                  file=sys.stderr)
    full_report("bf16_units", argv, results, args.out)


if __name__ == "__main__":
    main()

"""The machine's peak FLOP/s: the one function every speed benchmark divides by.

    python -m benchmarks.peak [--json]

`cpu_peak()` measures, on this machine, with a small C program (benchmarks/peak.c, built with
the system's C compiler on first use and cached):
- the float32 FMA throughput of every core at once, with the widest vector ISA present
  (AVX-512 or AVX2+FMA), 12 independent accumulators per core, timed in each thread's CPU
  time so other processes on a shared machine do not lower it;
- the clock, from a chain of dependent integer adds (one per cycle);
and derives what the two imply: flops per cycle per core and the number of full-width FMA
pipes (`2 * lanes * pipes = flops/cycle`: 2 on Intel Xeon with AVX-512, 1 on AMD Zen 4, whose
512-bit operations run on 256-bit pipes). bfloat16 peaks come from the ISA: `avx512_bf16`
(VDPBF16PS, two products per float32 lane) doubles the float32 rate; AMX (`amx_tile`, Intel
Sapphire Rapids and later: 1,024 bf16 multiply-adds per cycle per core) is counted from the
measured clock. Vendor, model name, family/model numbers and ISA flags come with it, so a
`fraction_of_peak` is never read apart from the CPU it was measured on.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("peak.c")
AMX_BF16_FLOPS_PER_CYCLE = 2 * 1024   # Intel AMX TMUL: 1,024 bf16 multiply-adds per cycle per core


def cpu_identity() -> dict:
    """Vendor, model name, family/model numbers and the ISA flags of /proc/cpuinfo."""
    info = {"vendor": "?", "model_name": platform.processor() or platform.machine(), "family": None,
            "model": None, "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "vendor_id":
            info["vendor"] = value
        elif key == "model name":
            info["model_name"] = value
        elif key == "cpu family":
            info["family"] = int(value)
        elif key == "model":
            info["model"] = int(value)
        elif key in ("flags", "Features"):
            info["flags"] = sorted(value.split())
            break   # the first processor's block is enough
    return info


def _binary() -> Path | None:
    """peak.c compiled once per source version into the user's cache; None without a compiler."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None or not SOURCE.exists():
        return None
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    out = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jaxnets" / f"peak-{digest}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}")
        subprocess.run([cc, "-O2", "-pthread", "-o", str(tmp), str(SOURCE)], check=True,
                       capture_output=True)
        tmp.replace(out)
    return out


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def cpu_peak(trials: int = 3, seconds: float = 0.1) -> dict:
    """Measured float32 peak of all cores this process may use, and the bf16 peaks it implies."""
    ident = cpu_identity()
    peak = {"vendor": ident["vendor"], "cpu_model": ident["model_name"], "family": ident["family"],
            "model": ident["model"], "cores": cores()}
    exe = _binary() if os.uname().machine in ("x86_64", "AMD64") else None
    if exe is None:
        return {**peak, "fp32_flops_per_s": None, "method": "not measured (no x86 C compiler)"}
    best = None
    for _ in range(trials):   # the best trial: a preempted one can only be slower
        isa, lanes, flops, hz = subprocess.run([str(exe), str(peak["cores"]), str(seconds)], check=True,
                                               capture_output=True, text=True).stdout.split()
        if best is None or float(flops) > best[2]:
            best = (isa, int(lanes), float(flops), float(hz))
    isa, lanes, flops, hz = best
    per_cycle = flops / peak["cores"] / hz if hz else 0.0
    flags = set(ident["flags"])
    bf16 = 2 * flops if "avx512_bf16" in flags else None
    amx = AMX_BF16_FLOPS_PER_CYCLE * hz * peak["cores"] if "amx_tile" in flags and "amx_bf16" in flags else None
    return {**peak, "vector_isa": isa, "fp32_lanes": lanes, "clock_hz": hz,
            "fp32_flops_per_cycle_per_core": per_cycle, "fma_pipes_full_width": per_cycle / (2 * lanes),
            "fp32_flops_per_s": flops, "bf16_flops_per_s": max(filter(None, (bf16, amx)), default=None),
            "bf16_units": "amx" if amx else ("avx512_bf16" if bf16 else "none"),
            "method": "measured: FMA throughput and add-chain clock in thread CPU time (benchmarks/peak.c)"}


def fraction_of_peak(flops_per_s: float | None, dtype: str = "float32") -> float | None:
    """Achieved over peak FLOP/s of this machine for `dtype` ("float32" or "bfloat16")."""
    p = cpu_peak()
    ceiling = p.get("bf16_flops_per_s" if dtype == "bfloat16" else "fp32_flops_per_s") or p.get("fp32_flops_per_s")
    return flops_per_s / ceiling if flops_per_s and ceiling else None


def efficiency(flops: float | None, ms: float, dtype: str = "float32", prefix: str = "") -> dict:
    """The row fields of one measured program: `{prefix}gflops_per_s`, `{prefix}fraction_of_peak`
    (None where the work's FLOPs are not counted)."""
    rate = flops / (ms / 1e3) if flops and ms else None
    frac = fraction_of_peak(rate, dtype)
    return {f"{prefix}gflops_per_s": rate / 1e9 if rate else None,
            f"{prefix}fraction_of_peak": round(frac, 4) if frac is not None else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.parse_args(argv)
    p = cpu_peak()
    print(f"{p['vendor']} {p['cpu_model']} (family {p['family']} model {p['model']}), {p['cores']} cores: "
          f"{(p['fp32_flops_per_s'] or 0) / 1e9:.0f} GFLOP/s float32 ({p.get('vector_isa')}, "
          f"{(p.get('clock_hz') or 0) / 1e9:.2f} GHz, {p.get('fp32_flops_per_cycle_per_core', 0):.1f} flops/cycle/core)")
    print(json.dumps({"benchmark": "peak", "results": [{"name": "cpu", **p}]}))


if __name__ == "__main__":
    main()

"""Shared benchmark plumbing: timing with warm-up, the machine a figure was measured on, and
the one-line JSON report.

Every result file in benchmarks/results/ carries `machine()` (CPU model, ISA flags, cores,
load average, the native kernels' build, jax version, commit) and a `date`, so
`python -m benchmarks.report` can rebuild every table from the newest results alone.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

from benchmarks.peak import cpu_identity, cpu_peak

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# The flags that decide which vector code runs (jaxnets.kernels.native.ISAS, XLA's own kernels).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
             "avx512_fp16", "amx_tile", "asimd", "sve", "sve2")


def peer_script(name: str) -> str:
    """A PyTorch peer of ../shared/peers/ (`$JAXNETS_PEERS` overrides the folder); worktrees one
    level deeper find it too."""
    folders = [os.environ.get("JAXNETS_PEERS", ""), ROOT.parent / "shared" / "peers",
               ROOT.parent.parent / "shared" / "peers"]
    for folder in filter(None, folders):
        if (Path(folder) / name).exists():
            return str(Path(folder) / name)
    return str(ROOT.parent / "shared" / "peers" / name)


def device_name() -> str:
    import jax
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    return f"{d.platform}:{kind} x{jax.device_count()} ({platform.processor() or platform.machine()})"


def commit() -> str:
    """HEAD of the checkout the benchmark ran from, with '+dirty' if tracked files differ."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + "+dirty" if dirty else head) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_tag(ident: dict | None = None) -> str:
    """A file-name tag for this CPU model, `amd_f25m17` (vendor, family and model numbers), so
    stored results of different CPUs sit side by side instead of replacing each other."""
    ident = ident or cpu_identity()
    vendor = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(ident.get("vendor"), "")
    if vendor and ident.get("family") is not None:
        return f"{vendor}_f{ident['family']}m{ident.get('model')}"
    return "".join(c if c.isalnum() else "_" for c in (ident.get("model_name") or platform.machine()).lower())


def machine(**extra) -> dict:
    """Where and when a figure was measured; `extra` adds run settings (env switches, ...).
    `cpu_vendor`, `cpu_family`, `cpu_model_number` and `isa_flags` name the CPU (model names alone
    do not: every AMD EPYC generation reads "AMD EPYC" in a VM); `peak` is the machine's
    measured peak (benchmarks.peak) that `fraction_of_peak` columns divide by."""
    ident = cpu_identity()
    flags = set(ident["flags"])
    info = {"cpu_model": ident["model_name"], "cpu_vendor": ident["vendor"], "cpu_family": ident["family"],
            "cpu_model_number": ident["model"], "arch": platform.machine(),
            "isa_flags": sorted(f for f in ISA_FLAGS if f in flags),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_avg": [round(v, 2) for v in os.getloadavg()],
            "commit": commit(), "date": now()}
    try:
        import jax
        from jaxnets.kernels import native
        info.update(jax=jax.__version__, native_isa=native.machine_isa() if native.enabled() else "off")
    except Exception:  # noqa: BLE001 - metadata must never fail a benchmark
        pass
    try:
        peak = cpu_peak()
        info["peak"] = {k: peak.get(k) for k in ("vector_isa", "clock_hz", "fp32_flops_per_s", "bf16_flops_per_s",
                                                 "bf16_units", "fma_pipes_full_width")}
    except (OSError, subprocess.SubprocessError, ValueError):   # no compiler, odd platform: no peak
        pass
    env = {k: v for k, v in os.environ.items() if k.startswith("JAXNETS_") or k == "XLA_FLAGS"}
    return {**info, "env": env, **extra}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def time_fn(fn: Callable[[], object], *, warmup: int = 3, runs: int = 20) -> dict[str, float]:
    """Median/min/max wall time of `fn()` in ms; `fn` must block (e.g. block_until_ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "runs": runs}


def report(name: str, results: list[dict], **extra) -> dict:
    """Print a readable table, then the JSON line that tools parse (always last); returns it."""
    for r in results:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in r.items() if k != "name")
        print(f"{r['name']}: {shown}")
    line = {"benchmark": name, "device": device_name(), "machine": machine(), "date": now(),
            "results": results, **extra}
    print(json.dumps(line))
    return line


def full_report(name: str, argv: list[str], results: list[dict], out: str | None, **extra) -> dict:
    """For benchmarks whose stored file carries every round: write {benchmark, command, machine,
    date, results, **extra} to `out` (if given) and print its short form as the JSON line."""
    import sys
    line = {"benchmark": name, "command": f"python -m benchmarks.{name} " + " ".join(argv or sys.argv[1:]),
            "machine": machine(), "date": now(), "results": results, **extra}
    if out:
        with open(out, "w") as f:
            json.dump(line, f, indent=1)
    print(json.dumps({k: line[k] for k in ("benchmark", "date", "results")}))
    return line


def save(report_: dict, filename: str) -> Path:
    """Write a result (with its machine and date) to benchmarks/results/<filename>."""
    path = RESULTS / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_, indent=1) + "\n")
    return path


def trained_judge(judge_dir: str):
    """The image judge of jaxnets/evaluators, trained into `judge_dir` first if it is not there
    (benchmarks sit above the CLI and may train, as `jaxnets train` does for its evaluators)."""
    from jaxnets.evaluators.image_judge import ImageJudge, judge_config   # JAX: only when asked
    from jaxnets.train.trainer import train

    if not os.path.isfile(os.path.join(judge_dir, "final.json")):
        train(judge_config(), judge_dir)
    return ImageJudge.load(judge_dir)

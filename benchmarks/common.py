"""Shared benchmark plumbing: timing with warm-up and the one-line JSON report."""
from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Callable

import jax


def device_name() -> str:
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    return f"{d.platform}:{kind} x{jax.device_count()} ({platform.processor() or platform.machine()})"


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


def report(name: str, results: list[dict]) -> None:
    """Print a readable table, then the JSON line that tools parse (always last)."""
    for r in results:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in r.items() if k != "name")
        print(f"{r['name']}: {shown}")
    print(json.dumps({"benchmark": name, "device": device_name(), "results": results}))

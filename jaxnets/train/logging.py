"""Where logged values go: metrics.jsonl, TensorBoard event files and a terminal progress bar."""
from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np


def _scalar(v):
    v = np.asarray(v)
    return float(v) if v.ndim == 0 else v.tolist()


class MetricWriter:
    """Append-only JSON lines (`{"step": ..., "train/loss": ...}`) plus TensorBoard scalars."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a")
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled or not metrics:
            return
        row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for k, v in row.items():
            if k != "step" and isinstance(v, float) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


class Progress:
    """tqdm bar on a terminal; on a pipe or file, nothing per step (the log lines suffice)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, postfix: dict | None = None) -> None:
        if self.bar is None:
            return
        self.bar.n = step
        if postfix:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log_line(step: int, total: int, metrics: dict, start_time: float) -> None:
    """One line for logs/pipes: step, a few metrics, elapsed time."""
    keys = [k for k, v in metrics.items() if isinstance(v, float)
            and not any(s in k for s in ("_per_sec", "macro_", "micro_"))]
    shown = " ".join(f"{k}={metrics[k]:.4g}" for k in keys[:6])
    print(f"[step {step}/{total} {time.time() - start_time:.0f}s] {shown}", flush=True)

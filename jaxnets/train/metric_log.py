"""Where logged values go: metrics.jsonl, TensorBoard event files and a terminal progress bar."""
from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np
from tqdm import tqdm


def _scalar(v):
    v = np.asarray(v)
    return float(v) if v.ndim == 0 else v.tolist()


def strict_json(value, name: str = "", bad: list | None = None):
    """`value` with every NaN/Infinity replaced by None; the names of the replaced values are
    appended to `bad`. The result passes `json.dumps(..., allow_nan=False)`, so every reader
    (jq, JavaScript, `json.loads(s, parse_constant=raise)`) accepts it."""
    bad = [] if bad is None else bad
    if isinstance(value, dict):
        return {k: strict_json(v, f"{name}.{k}" if name else str(k), bad) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        before = len(bad)
        out = [strict_json(v, name, bad) for v in value]
        del bad[before + 1:]   # name a list once, however many of its entries were non-finite
        return out
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(name)
        return None
    return value


def read_rows(path: str) -> list[dict]:
    """The rows of a metrics.jsonl; a torn last line (a kill mid-write) is skipped."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


class MetricWriter:
    """Append-only JSON lines (`{"step": ..., "train/loss": ...}`) plus TensorBoard scalars.

    `resume_step`: the step the run starts from. Rows past it (written by an earlier run that was
    killed after its last checkpoint) are dropped, atomically, so that metrics.jsonl never holds a
    step twice; TensorBoard gets the same cut through a purge step.
    """

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        if not enabled:
            return
        self.path = os.path.join(workdir, "metrics.jsonl")
        if resume_step is not None and os.path.exists(self.path):
            _truncate_rows(self.path, resume_step)
        self._file = open(self.path, "a")
        from tensorboardX import SummaryWriter  # heavy (protobuf): only when a run writes metrics
        tb_dir = os.path.join(workdir, "tensorboard")
        # TensorBoard hides events with step >= purge_step from older event files.
        purge = resume_step + 1 if resume_step is not None and os.path.isdir(tb_dir) else None
        # A resumed run's event file gets its own name even within the same second.
        self._tb = SummaryWriter(tb_dir, purge_step=purge,
                                 filename_suffix=f".resumed{resume_step}" if purge else "")

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled or not metrics:
            return
        bad: list[str] = []
        row = {"step": int(step), **strict_json({k: _scalar(v) for k, v in metrics.items()}, bad=bad)}
        if bad:
            row["nonfinite"] = bad
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


def _truncate_rows(path: str, resume_step: int) -> None:
    rows = [r for r in read_rows(path) if isinstance(r, dict) and r.get("step", 0) <= resume_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(strict_json(r), allow_nan=False) + "\n" for r in rows)
    os.replace(tmp, path)


class Progress:
    """tqdm bar on a terminal; on a pipe or file, nothing per step (the log lines suffice)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
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

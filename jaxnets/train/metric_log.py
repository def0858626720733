"""Where logged values go: metrics.jsonl, TensorBoard event files and a terminal progress bar."""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

from jaxnets import storage


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
        self.path = storage.join(workdir, "metrics.jsonl")
        self.remote = storage.is_remote(workdir)
        if self.remote:
            # An object cannot be appended to: the rows are kept and the object rewritten on
            # every write (a few kB per thousand steps), which also makes every version whole.
            self._rows = _read_text_rows(storage.read_text(self.path)) if storage.exists(self.path) else []
            self._rows = [r for r in self._rows if resume_step is None or r.get("step", 0) <= resume_step]
            storage.write_text(self.path, "".join(self._rows_text()))
        else:
            if resume_step is not None and os.path.exists(self.path):
                _truncate_rows(self.path, resume_step)
            self._file = open(self.path, "a")
        from tensorboardX import SummaryWriter  # heavy (protobuf): only when a run writes metrics
        tb_dir = storage.join(workdir, "tensorboard")
        # TensorBoard hides events with step >= purge_step from older event files.
        purge = resume_step + 1 if resume_step is not None and storage.isdir(tb_dir) else None
        # Object stores: events are written to a local folder and uploaded when the writer closes.
        self._tb_remote = tb_dir if self.remote else None
        self._tb_local = tempfile.mkdtemp(prefix="jaxnets-tensorboard-") if self.remote else tb_dir
        # A resumed run's event file gets its own name even within the same second.
        self._tb = SummaryWriter(self._tb_local, purge_step=purge,
                                 filename_suffix=f".resumed{resume_step}" if purge else "")

    def _rows_text(self):
        return [json.dumps(strict_json(r), allow_nan=False) + "\n" for r in self._rows]

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled or not metrics:
            return
        bad: list[str] = []
        row = {"step": int(step), **strict_json({k: _scalar(v) for k, v in metrics.items()}, bad=bad)}
        if bad:
            row["nonfinite"] = bad
        if self.remote:
            self._rows.append(row)
            storage.write_text(self.path, "".join(self._rows_text()))
        else:
            self._file.write(json.dumps(row, allow_nan=False) + "\n")
            self._file.flush()
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._tb.close()
        if self.remote:
            for name in os.listdir(self._tb_local):
                with open(os.path.join(self._tb_local, name), "rb") as f:
                    storage.write_bytes(storage.join(self._tb_remote, name), f.read())
            shutil.rmtree(self._tb_local, ignore_errors=True)
        else:
            self._file.close()


def _read_text_rows(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:   # a torn last line
            continue
    return [r for r in rows if isinstance(r, dict)]


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

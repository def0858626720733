"""`train.profile_steps = (start, stop)`: a jax.profiler trace of steps start..stop-1.

The trace lands in WORKDIR/profile/plugins/profile/<run>/ (an .xplane.pb), which TensorBoard's
profile plugin (`tensorboard --logdir WORKDIR/profile`) and Perfetto (ui.perfetto.dev; the
trace also has a .trace.json.gz) open. Start after the first steps so compilation is not
what you measure: `--config.train.profile_steps="(10, 20)"`.
"""
from __future__ import annotations

import os

import jax

from jaxnets.errors import UserError


class StepProfiler:
    def __init__(self, steps, workdir: str, enabled: bool = True):
        steps = tuple(steps or ())
        if steps and (len(steps) != 2 or not 0 <= steps[0] < steps[1]):
            raise UserError(f"train.profile_steps must be (start, stop) with 0 <= start < stop, got {steps}.")
        self.start, self.stop = steps if steps and enabled else (None, None)
        self.directory = os.path.join(workdir, "profile")
        self.active = False

    def at(self, step: int, state) -> None:
        """Call before running `step`; `state` is waited for so a trace holds whole steps."""
        if step == self.start and not self.active:
            jax.block_until_ready(state)
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.active = True
        elif step == self.stop and self.active:
            jax.block_until_ready(state)
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            print(f"Wrote a profile of steps {self.start}..{self.stop - 1} to {self.directory}", flush=True)

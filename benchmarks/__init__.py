"""Benchmarks by purpose: `python -m benchmarks.NAME [--json]`; the last stdout line is one JSON object.

Rooms:
  speed/    how fast a step, a kernel, a decode or a start is (vs PyTorch where a peer exists)
  course/   experiments that reproduce a result of the course (degradation, fitting, VAE terms...)
  faults/   fault injection: kills, corruption, bad input (`python -m benchmarks.faults`)
  peers/    PyTorch peers, run in their own venv as subprocesses (never imported here)
  gpu/      prepared one-call shell scripts for a GPU machine
  results/  measured reports; `python -m benchmarks.report` rebuilds every table from them
Shared by every room, at the top: common.py (report writing, machine description), peak.py (the
machine's measured peak FLOP/s that `fraction_of_peak` divides by) and report.py.

Every benchmark keeps its flat command: `python -m benchmarks.lstm` runs benchmarks/speed/lstm.py.
`ALIASES` below is the one table of flat names; a finder on `sys.meta_path`, installed when this
package is imported (which `python -m benchmarks.NAME` always does first), serves them. In code,
import the room's module (`from benchmarks.speed import lstm`); a flat import resolves to it too.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

# flat name -> (module in its room, arguments put before the user's)
ALIASES: dict[str, tuple[str, tuple[str, ...]]] = {
    **{name: (f"benchmarks.speed.{name}", ()) for name in (
        "attention", "before_after", "bf16_units", "conv_filter_grad", "cpu_layout", "decode", "input_pipeline", "layer_norm", "lstm", "lstm_gpu",
        "model_step", "native_sources", "op_profile",
        "resnet_step", "scaling", "scaling_compiled", "startup", "train_step", "transformer_step")},
    "resnet_step_compare": ("benchmarks.speed.resnet_step", ("--compare",)),
    "resnet_step_levers": ("benchmarks.speed.resnet_step", ("--levers",)),
    **{name: (f"benchmarks.course.{name}", ()) for name in (
        "degradation", "fitting", "generative", "long_memory", "long_range", "text_conditioning",
        "vae_terms")},
}

_STUB = """\
import importlib, runpy, sys
if __name__ == "__main__":
    sys.argv[1:1] = {flags!r}
    runpy.run_module({target!r}, run_name="__main__", alter_sys=True)
else:
    sys.modules[__name__] = importlib.import_module({target!r})
"""


class _AliasLoader(importlib.abc.InspectLoader):
    """Runs the room's module as `__main__` (with the alias's flags) or, when imported, stands
    for it in sys.modules; `get_code` is what `python -m` (runpy) calls."""

    def __init__(self, target: str, flags: tuple[str, ...]):
        self.target, self.flags = target, flags

    def get_source(self, fullname):
        return _STUB.format(target=self.target, flags=list(self.flags))

    def is_package(self, fullname):
        return False

    def exec_module(self, module):
        exec(self.get_code(module.__name__), module.__dict__)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix != __name__ or name not in ALIASES:
            return None
        module, flags = ALIASES[name]
        real = importlib.util.find_spec(module)   # origin: the room's file, for tools that read it
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module, flags),
                                              origin=real.origin if real else None)


def names() -> list[str]:
    """Every benchmark's flat name (`jaxnets list`, `jaxnets bench NAME`), plus the faults suite."""
    return sorted([*ALIASES, "faults", "peak", "report"])


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.append(_AliasFinder())

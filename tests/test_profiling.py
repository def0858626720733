"""train.profile_steps writes a jax.profiler trace of those steps under WORKDIR/profile."""
import glob
import os

import pytest

from helpers import run_cli, tiny_config
from jaxnets.config import apply_overrides
from jaxnets.errors import UserError
from jaxnets.train.profiling import StepProfiler


def test_profile_steps_write_a_trace(tmp_path):
    # As users run it, in a process of its own: jax.profiler's start_trace once segfaulted when
    # this ran in-process inside a long-lived pytest-xdist worker, after hundreds of tests.
    assert apply_overrides(tiny_config(steps=4, model="mlp"),
                           ["train.profile_steps=(1, 3)"]).train.profile_steps == (1, 3)
    out = run_cli("train", "--config", "experiments/mnist_cnn.py:smoke", "--config.train.steps=4",
                  "--config.train.profile_steps=(1, 3)", "--config.train.report=False",
                  "--config.train.progress=False", "--workdir", str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*"))
    assert len(runs) == 1
    files = os.listdir(runs[0])
    assert any(f.endswith(".xplane.pb") for f in files)
    assert any(f.endswith(".trace.json.gz") for f in files)     # Perfetto


def test_bad_profile_steps_are_refused():
    with pytest.raises(UserError, match="start < stop"):
        StepProfiler((5, 2), "/tmp")

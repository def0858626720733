"""train.profile_steps writes a jax.profiler trace of those steps under WORKDIR/profile."""
import glob
import os

import pytest

from helpers import tiny_config
from jaxnets.config import apply_overrides
from jaxnets.errors import UserError
from jaxnets.train.profiling import StepProfiler
from jaxnets.train.trainer import train


def test_profile_steps_write_a_trace(tmp_path):
    c = apply_overrides(tiny_config(steps=4, model="mlp"), ["train.profile_steps=(1, 3)"])
    assert c.train.profile_steps == (1, 3)
    c.train.report = False
    train(c, str(tmp_path))
    runs = glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*"))
    assert len(runs) == 1
    files = os.listdir(runs[0])
    assert any(f.endswith(".xplane.pb") for f in files)
    assert any(f.endswith(".trace.json.gz") for f in files)     # Perfetto


def test_bad_profile_steps_are_refused():
    with pytest.raises(UserError, match="start < stop"):
        StepProfiler((5, 2), "/tmp")

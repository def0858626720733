"""Kernel choices are made ahead of tracing: the kernel table (or the fixed rule) decides the
compiled program, never a timing; `jaxnets tune` writes the table."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from jaxnets.errors import UserError
from jaxnets.kernels import conv_filter_grad, native
from jaxnets.nn.lowering import filter_grad_key
from jaxnets.platform import kernel_table

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU kernels")

# The ResNet smoke step's program text (HLO of the lowered train step) under a kernel table.
STEP_HLO = textwrap.dedent("""
    import hashlib, json, sys
    from jaxnets.config import apply_overrides, load_config
    from jaxnets.kernels import conv_filter_grad
    from jaxnets.nn.lowering import filter_grad_key
    from jaxnets.platform import tune
    from jaxnets.train.trainer import Trainer
    # Any timing while the step is traced would fail loudly.
    conv_filter_grad.time_choice = lambda *a, **k: sys.exit("timed while tracing")
    config = apply_overrides(load_config("experiments/resnet_cifar.py:smoke"),
                             ["platform.kernel_table=" + sys.argv[1], "mesh_devices=1"])
    trainer = Trainer(config, None, layout_only=True)
    keys = sorted({filter_grad_key(x, g) for x, g in tune.traced_filter_grads(trainer)})
    text = trainer.jit_train_step.lower(*tune.abstract_step_args(trainer)).as_text()
    print(json.dumps({"digest": hashlib.sha256(text.encode()).hexdigest(), "keys": keys,
                      "calls": text.count("jaxnets_conv3x3_filter_grad")}))
""")


def _step_hlo(table_path, env):
    run = subprocess.run([sys.executable, "-c", STEP_HLO, str(table_path)], capture_output=True,
                         text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)),
                         env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@cpu_only
def test_same_table_same_program_on_two_isas(tmp_path):
    """Two hosts of different instruction sets (forced builds), one table: the same program text.
    A table that chooses XLA for a shape changes the program; nothing is timed while tracing."""
    if native.load(conv_filter_grad.NAME) is None:
        pytest.skip("no native kernel on this machine (no compiler)")
    isas = native.runnable_isas()
    if len(isas) < 2:
        pytest.skip("this CPU runs one build only")
    table = tmp_path / "kernels.json"
    kernel_table.save({"format": kernel_table.FORMAT, kernel_table.FILTER_GRAD: {}}, str(table))
    first = _step_hlo(table, {"JAXNETS_NATIVE_ISA": isas[0]})
    second = _step_hlo(table, {"JAXNETS_NATIVE_ISA": isas[-1]})
    assert first == second and first["calls"] > 0     # the native kernel is in both, same text
    # A table choosing XLA for every shape: no native call, another program, on both ISAs.
    kernel_table.save({"format": kernel_table.FORMAT, kernel_table.FILTER_GRAD: {
        k: {"choice": "xla"} for k in first["keys"]}}, str(table))
    xla = _step_hlo(table, {"JAXNETS_NATIVE_ISA": isas[0]})
    assert xla["calls"] == 0 and xla["digest"] != first["digest"]
    assert _step_hlo(table, {"JAXNETS_NATIVE_ISA": isas[-1]}) == xla


def test_table_entries_drive_the_choice(tmp_path):
    from jaxnets.platform.lowering_rule import cpu_conv_lowering, lowering_for
    path = tmp_path / "t.json"
    key = filter_grad_key((8, 16, 16, 16), (8, 16, 16, 32))
    kernel_table.save({"format": kernel_table.FORMAT, kernel_table.FILTER_GRAD: {key: {"choice": "xla"}}},
                      str(path))
    lowering = lowering_for({"kernel_table": str(path)}, backend="cpu")
    assert lowering.conv.filter_grad_choice((8, 16, 16, 16), (8, 16, 16, 32)) == "xla"
    assert lowering.conv.filter_grad_choice((8, 16, 16, 16), (8, 16, 16, 16)) == cpu_conv_lowering().default_filter_grad
    assert lowering_for({"kernel_table": str(path)}, backend="gpu").conv is None


def test_bad_tables_are_refused(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(UserError, match="Cannot read kernel table"):
        kernel_table.load(str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": 1, kernel_table.FILTER_GRAD: {"k": {"choice": "fast"}}}))
    with pytest.raises(UserError, match="choice"):
        kernel_table.load(str(bad))
    bad.write_text("{")
    with pytest.raises(UserError, match="not JSON"):
        kernel_table.load(str(bad))


@cpu_only
def test_time_choice_times_both_forms():
    if native.load(conv_filter_grad.NAME) is None:
        pytest.skip("no native kernel on this machine (no compiler)")
    entry = conv_filter_grad.time_choice((2, 8, 8, 16), (2, 8, 8, 16), threads=1, rounds=2)
    assert entry["choice"] in kernel_table.CHOICES and entry["native_ms"] > 0 and entry["xla_ms"] > 0
    assert entry["choice"] == min(("native", "xla"), key=lambda n: entry[f"{n}_ms"])

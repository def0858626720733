"""The CPU back-end seam: fusion barriers, folded convolutions, the native filter gradient,
malloc tuning and per-core devices apply on CPU only; a GPU/TPU process gets none of them.
The choice is the platform's (`lowering_for(backend=...)`), passed to the model as an argument."""
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxnets.platform import allocator, devices
from jaxnets.platform.lowering_rule import lowering_for
from jaxnets.models.resnet import ResNet

import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Primitives only the CPU path brings (jax.nn.relu itself is a custom_jvp: allowed by name).
CPU_ONLY_PRIMITIVES = ("custom_vjp_call", "ffi_call", "custom_vmap", "custom_partitioning")


def _train_step_jaxpr(model):
    x = jnp.ones((2, 8, 8, 3))
    def loss(m):
        return jnp.sum(m(x, train=True) ** 2)
    graphdef, state = nnx.split(model)
    return str(jax.make_jaxpr(lambda s: jax.grad(lambda s: loss(nnx.merge(graphdef, s)))(s))(state))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="compares against the CPU program")
@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_accelerator_backend_gets_no_cpu_tricks(backend):
    on_cpu = _train_step_jaxpr(ResNet(depth=8, width=16, lowering=lowering_for(), rngs=nnx.Rngs(0)))
    assert "custom_vjp_call" in on_cpu          # the barrier and conv3x3's own VJP, on CPU
    model = ResNet(depth=8, width=16, lowering=lowering_for(backend=backend), rngs=nnx.Rngs(0))
    elsewhere = _train_step_jaxpr(model)
    assert not [p for p in CPU_ONLY_PRIMITIVES if p in elsewhere], elsewhere[:2000]
    assert "jaxnets_" not in elsewhere
    assert set(re.findall(r"custom_jvp_call\[\s*name=(\w+)", elsewhere)) <= {"relu"}
    # no barriers (a native call, or an identity matmul without a native build): only the
    # classifier head's matmul and its two gradients
    assert elsewhere.count("dot_general") == 3
    assert "jaxnets_fusion_barrier" in on_cpu or on_cpu.count("dot_general") > 3


def test_accelerator_process_keeps_default_malloc_and_devices(monkeypatch):
    monkeypatch.setattr(allocator, "accelerator_expected", lambda: True)
    monkeypatch.setattr(devices, "accelerator_expected", lambda: True)
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(devices, "one_device_per_core", lambda *a: pytest.fail("per-core devices on GPU"))
    assert allocator.tune_host_allocator() is False
    assert devices.auto_cpu_devices([128], "auto") == 1


def test_plain_lowering_is_the_default():
    """A model built without a lowering (research code, any backend) gets no CPU path."""
    plain = _train_step_jaxpr(ResNet(depth=8, width=16, rngs=nnx.Rngs(0)))
    assert not [p for p in CPU_ONLY_PRIMITIVES if p in plain]


def test_an_installed_plugin_without_its_chip_keeps_the_cpu_choices(monkeypatch, tmp_path):
    # libtpu installed for `jaxnets compile` on a CPU host: per-core devices and the tuned
    # malloc stay on (they had silently turned off, and the Transformer smoke step took 1.6x).
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: object() if name == "libtpu" else None)
    monkeypatch.setattr(devices.importlib.metadata, "entry_points", lambda group: [])
    fake = {kind: (str(tmp_path / kind / "*"),) for kind in devices.ACCELERATOR_DEVICE_FILES}
    monkeypatch.setattr(devices, "ACCELERATOR_DEVICE_FILES", fake)
    assert not devices.accelerator_expected()
    (tmp_path / "tpu").mkdir()
    (tmp_path / "tpu" / "accel0").touch()                 # the chip's device file
    assert devices.accelerator_expected()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")             # an explicit choice wins
    assert not devices.accelerator_expected()

    class Plugin:
        def __init__(self, name):
            self.name = name
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(devices.importlib.metadata, "entry_points", lambda group: [Plugin("xla_cuda12")])
    assert not devices.accelerator_expected()             # a CUDA plugin, no /dev/nvidia*
    (tmp_path / "cuda").mkdir()
    (tmp_path / "cuda" / "nvidia0").touch()
    assert devices.accelerator_expected()
    monkeypatch.setattr(devices.importlib.metadata, "entry_points", lambda group: [Plugin("some_new_chip")])
    assert devices.accelerator_expected()                  # a plugin jaxnets does not know: assumed present


def test_a_cli_process_on_a_host_without_accelerators_never_starts_libtpu(tmp_path):
    # With the `tpu` extra installed (CI installs it) and no chip, JAX would start libtpu in
    # every process, print its worker-hostname warnings and fall back to the CPU; the CLI's
    # platform layer pins the CPU first. TPU targets still compile (tests/test_compile.py).
    if importlib.util.find_spec("libtpu") is None or devices.accelerator_expected():
        pytest.skip("needs libtpu installed on a host without accelerators")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    run = subprocess.run([sys.executable, "-m", "jaxnets.cli", "train", "--config",
                          "experiments/mnist_cnn.py:smoke", "--config.train.steps=1",
                          "--config.train.report=False", "--workdir", str(tmp_path / "w")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "TPU" not in run.stderr and "libtpu" not in run.stderr, run.stderr[-3000:]

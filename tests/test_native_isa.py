"""Per-ISA builds of the native kernels, the forced-ISA switch, and the kernel-or-XLA choice."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets.kernels import conv_filter_grad, native
from test_conv import np_filter_grad

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU kernel")


@cpu_only
@pytest.mark.parametrize("isa", sorted(native.ISAS))
@pytest.mark.parametrize("b,h,w,c,o", [
    (2, 5, 6, 8, 16),      # fewer input channels than one tile: the leftover tiles only
    (3, 7, 9, 40, 32),     # 40 = 6 x 6 + 4 (AVX2/portable) = 5 x 8 (AVX-512)
    (2, 3, 5, 24, 48),     # 48 outputs: single-vector-column tiles on AVX-512
    (1, 4, 4, 64, 64),     # whole images per pixel block
    (2, 40, 33, 16, 16),   # rows split over several pixel blocks
])
def test_each_build_matches_float64_reference(isa, b, h, w, c, o):
    if isa not in native.runnable_isas():
        pytest.skip(f"this CPU cannot run the {isa} build")
    target = native.ffi_target(conv_filter_grad.NAME, "Conv3x3FilterGrad", isa)
    if target is None:
        pytest.skip("no native kernel on this machine (no compiler)")
    rng = np.random.default_rng(b * 1000 + h * 10 + c)
    x, g = rng.normal(size=(b, h, w, c)), rng.normal(size=(b, h, w, o))
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((3, 3, c, o), jnp.float32))
    for threads in (1, 0):   # inline, and split over the intra-op pool
        dw = jax.jit(lambda x, g: call(x, g, threads=np.int64(threads)))(
            jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32))
        ref = np_filter_grad(x, g)
        np.testing.assert_allclose(np.asarray(dw), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_forced_isa(monkeypatch):
    monkeypatch.setattr(native, "runnable_isas", lambda: ["avx2", "portable"])
    monkeypatch.setenv("JAXNETS_NATIVE_ISA", "portable")
    assert native.machine_isa() == "portable"
    monkeypatch.delenv("JAXNETS_NATIVE_ISA")
    assert native.machine_isa() == "avx2"
    monkeypatch.setenv("JAXNETS_NATIVE_ISA", "avx512")          # not runnable here: refused
    with pytest.warns(UserWarning, match="cannot run"):
        assert native.machine_isa() == "avx2"
    monkeypatch.setenv("JAXNETS_NATIVE_ISA", "sse9")
    with pytest.raises(ValueError, match="JAXNETS_NATIVE_ISA"):
        native.machine_isa()


def test_runnable_isas_follow_cpu_flags(monkeypatch):
    monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(native, "_cpu_flags", lambda: {"avx", "avx2", "fma", "bmi2"})
    assert native.runnable_isas() == ["avx2", "portable"]
    monkeypatch.setattr(native, "_cpu_flags", lambda: {"avx2", "fma", "bmi2", "avx512f", "avx512vl",
                                                       "avx512bw", "avx512dq"})
    assert native.runnable_isas() == ["avx512", "avx2", "portable"]
    monkeypatch.setattr(native.platform, "machine", lambda: "aarch64")
    assert native.runnable_isas() == ["portable"]


def test_faster_times_once_and_keeps_the_choice(tmp_path, monkeypatch):
    import time
    monkeypatch.setenv("JAXNETS_CACHE", str(tmp_path))
    monkeypatch.setenv("JAXNETS_NATIVE_AUTOTUNE", "1")
    monkeypatch.setattr(native, "_choices", None)
    calls = {"slow": 0, "quick": 0}

    def candidate(name, seconds):
        def make():
            def call():
                calls[name] += 1
                time.sleep(seconds)
            return call
        return make
    assert native.faster("k", {"slow": candidate("slow", 0.01), "quick": candidate("quick", 0.0)}) == "quick"
    assert calls["slow"] == calls["quick"] > 1
    saved = json.loads(native._choices_file().read_text())
    assert saved["k"]["choice"] == "quick" and saved["k"]["slow_ms"] > saved["k"]["quick_ms"]
    # A new process reads the file and times nothing.
    monkeypatch.setattr(native, "_choices", None)
    boom = lambda: (_ for _ in ()).throw(AssertionError("timed again"))
    assert native.faster("k", {"slow": boom, "quick": boom}) == "quick"
    # Autotuning off: the first candidate (the kernel), untimed.
    monkeypatch.setenv("JAXNETS_NATIVE_AUTOTUNE", "0")
    assert native.faster("other", {"slow": boom, "quick": boom}) == "slow"


def test_failed_timing_falls_back_to_the_first(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXNETS_CACHE", str(tmp_path))
    monkeypatch.setenv("JAXNETS_NATIVE_AUTOTUNE", "1")
    monkeypatch.setattr(native, "_choices", None)
    def broken():
        raise RuntimeError("no")
    with pytest.warns(UserWarning, match="could not time"):
        assert native.faster("k", {"kernel": broken, "xla": broken}) == "kernel"


@cpu_only
def test_preferred_inside_a_traced_step(tmp_path, monkeypatch):
    """The choice is timed while a gradient is being traced (concrete operands of its own)."""
    if native.load(conv_filter_grad.NAME) is None:
        pytest.skip("no native kernel on this machine (no compiler)")
    monkeypatch.setenv("JAXNETS_CACHE", str(tmp_path))
    monkeypatch.setenv("JAXNETS_NATIVE_AUTOTUNE", "1")
    monkeypatch.setattr(native, "_choices", None)
    seen = []
    jax.jit(lambda x, g: seen.append(conv_filter_grad.preferred(x, g)) or x.sum())(
        jnp.ones((2, 8, 8, 16)), jnp.ones((2, 8, 8, 16)))
    (entry,) = json.loads(native._choices_file().read_text()).values()
    assert seen == [entry["choice"] == "native"] and entry["native_ms"] > 0 and entry["xla_ms"] > 0

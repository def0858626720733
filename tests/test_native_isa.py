"""Per-ISA builds of the native kernels, the forced-ISA switch, and ISA-independent target names."""

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
        dw = jax.jit(lambda x, g: call(x, g, threads=np.int64(threads), stride=np.int64(1)))(
            jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32))
        ref = np_filter_grad(x, g)
        np.testing.assert_allclose(np.asarray(dw), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@cpu_only
@pytest.mark.parametrize("isa", sorted(native.ISAS))
def test_each_build_strided_filter_gradient(isa):
    """Stride 2 (a ResNet's downsampling layer), odd sizes, both thread modes."""
    from test_conv_forward_kernel import np_filter_grad_stride2
    if isa not in native.runnable_isas():
        pytest.skip(f"this CPU cannot run the {isa} build")
    target = native.ffi_target(conv_filter_grad.NAME, "Conv3x3FilterGrad", isa)
    if target is None:
        pytest.skip("no native kernel on this machine (no compiler)")
    rng = np.random.default_rng(5)
    x, g = rng.normal(size=(2, 9, 34, 16)), rng.normal(size=(2, 5, 17, 32))
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((3, 3, 16, 32), jnp.float32))
    ref = np_filter_grad_stride2(x, g)
    for threads in (1, 0):
        dw = jax.jit(lambda x, g: call(x, g, threads=np.int64(threads), stride=np.int64(2)))(
            jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32))
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


@cpu_only
def test_machine_build_has_one_name_on_every_isa():
    """The machine's own build registers as `jaxnets_<name>_<symbol>` whatever its ISA, so a
    program calling it is the same text on AVX-512, AVX2 or ARM hosts; an explicit ISA gets its
    own name."""
    if native.load(conv_filter_grad.NAME) is None:
        pytest.skip("no native kernel on this machine (no compiler)")
    name = "jaxnets_conv3x3_filter_grad_Conv3x3FilterGrad"
    assert native.ffi_target(conv_filter_grad.NAME, "Conv3x3FilterGrad") == name
    isa = native.runnable_isas()[-1]
    assert native.ffi_target(conv_filter_grad.NAME, "Conv3x3FilterGrad", isa) == f"{name}_{isa}"

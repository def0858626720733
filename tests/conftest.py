"""Test session set-up: 8 forced CPU devices, so sharding tests run on any machine.

XLA_FLAGS must be set before jax is imported anywhere, hence at conftest import time.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests check the native kernels wherever they apply; which of kernel or XLA is faster on this
# machine (timed at first use, jaxnets.kernels.native.faster) is tested on its own.
os.environ.setdefault("JAXNETS_NATIVE_AUTOTUNE", "0")
# Compiled programs persist between test runs (JAX's compilation cache under $JAXNETS_CACHE/xla;
# JAXNETS_COMPILATION_CACHE=0 turns it off), as for `jaxnets train`.
from jaxnets.platform.compile_cache import enable_compilation_cache  # noqa: E402  (after XLA_FLAGS)

enable_compilation_cache()

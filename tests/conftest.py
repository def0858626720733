"""Test session set-up: 8 forced CPU devices, so sharding tests run on any machine.

XLA_FLAGS must be set before jax is imported anywhere, hence at conftest import time.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

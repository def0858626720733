"""Native CPU kernels: C++ XLA FFI handlers in this folder, compiled on first use.

    lib = load("conv3x3_filter_grad")          # ctypes.CDLL, or None where it cannot be built

Each `<name>.cc` beside this file is built once per machine and source version with the host
compiler (`$CXX`, else g++ or c++) and `-O3 -march=native` against the XLA FFI headers that
jaxlib ships, into `$JAXNETS_CACHE/kernels` (default `~/.cache/jaxnets/kernels`), then
loaded. The cache key includes the source hash, jax's version and the CPU's model and flags, so a
new CPU or jaxlib rebuilds. Building takes ~3 s; the object is written to a temporary file and
renamed, so parallel test workers or hosts sharing a home directory never read a half-written
library.

Native kernels are an optimisation: when no compiler is present, the build fails, or
`JAXNETS_NATIVE_KERNELS=0` is set, `load` returns None (with one warning saying why, except for
the explicit opt-out) and callers take their XLA path.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax

HERE = Path(__file__).resolve().parent


def enabled() -> bool:
    return os.environ.get("JAXNETS_NATIVE_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    root = os.environ.get("JAXNETS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxnets")
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    """Model name and feature flags: an object built with -march=native only fits this CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [l for l in text.splitlines() if l.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _build(name: str, source: Path, compiler: str) -> Path:
    text = source.read_bytes()
    key = hashlib.sha256(text + jax.__version__.encode() + _cpu_signature().encode()
                         + compiler.encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w",
           f"-I{jax.ffi.include_dir()}", str(source), "-o", tmp]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The compiled `<name>.cc` of this folder, or None where native kernels are unavailable."""
    if not enabled():
        return None
    compiler = _compiler()
    if compiler is None:
        warnings.warn(f"jaxnets: no C++ compiler found; native kernel {name!r} disabled, using XLA's path",
                      stacklevel=2)
        return None
    try:
        return ctypes.cdll.LoadLibrary(str(_build(name, HERE / f"{name}.cc", compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f"jaxnets: native kernel {name!r} disabled, using XLA's path: {err}", stacklevel=2)
        return None


@functools.cache
def ffi_target(name: str, symbol: str) -> str | None:
    """Register `symbol` of kernel library `name` as a CPU FFI target; its target name, or None."""
    lib = load(name)
    if lib is None:
        return None
    target = f"jaxnets_{name}"
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return target

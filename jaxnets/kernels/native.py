"""Native CPU kernels: C++ XLA FFI handlers in this folder, compiled on first use.

    lib = load("conv3x3_filter_grad")          # ctypes.CDLL, or None where it cannot be built

Each `<name>.cc` beside this file is built once per instruction set and source version with
the host compiler (`$CXX`, else g++ or c++) against the XLA FFI headers that jaxlib ships, into
`$JAXNETS_CACHE/kernels` (default `~/.cache/jaxnets/kernels`), then loaded. One build per ISA
(`ISAS`: target flags plus the -D macros that size a kernel's register tiles), chosen at load
time from the CPU's flags (`machine_isa`): `-march=native` alone would compile AVX-512-sized tiles
for an AVX2 machine, where they spill (4.3x slower than PyTorch on a Zen 3).
`JAXNETS_NATIVE_ISA=avx512|avx2|portable` forces one (the AVX2 and portable builds run, and are
tested, on an AVX-512 machine too; a build the CPU cannot run is refused with a warning). The
cache key includes the source hash (with the shared header `native_kernels.h`), the ISA's
flags, jax's version and the compiler. Building takes ~3 s; the object is written to a
temporary file and renamed, so parallel test workers or hosts sharing a home directory never
read a half-written library.

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
import jax.numpy as jnp

from jaxnets.cache import cache_root

HERE = Path(__file__).resolve().parent


def enabled() -> bool:
    return os.environ.get("JAXNETS_NATIVE_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def vector_build() -> bool:
    """Native kernels on (see `enabled`) with a vector build (AVX2 or AVX-512) for this machine:
    where kernels that beat XLA only with vector code (attention, the recurrences) are taken.
    The portable build (SSE2 on x86, NEON on ARM) was slower than XLA's path for attention
    forward+backward on the Zen 4 machine (`JAXNETS_NATIVE_ISA=portable`, docs/cpu_choices.md)."""
    return enabled() and machine_isa() in ("avx512", "avx2")


def cache_dir() -> Path:
    return cache_root() / "kernels"


# Per ISA: compiler target flags and the kernels' vector width / register budget (see the .cc).
# "portable" is plain -O3 for the host architecture: SSE2 on x86-64, NEON on AArch64.
ISAS = {
    "avx512": (["-march=x86-64-v4", "-mtune=native"], {"JAXNETS_VW": 16, "JAXNETS_ACC": 16, "JAXNETS_OV": 2}),
    "avx2": (["-march=x86-64-v3", "-mtune=native"],
             {"JAXNETS_VW": 8, "JAXNETS_ACC": 12, "JAXNETS_OV": 2, "JAXNETS_BLOCK_PIXELS": 256}),
    "portable": ([], {"JAXNETS_VW": 4, "JAXNETS_ACC": 12, "JAXNETS_OV": 2}),
}


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def runnable_isas() -> list[str]:
    """The builds this CPU can run, best first."""
    flags = _cpu_flags()
    isas = []
    if platform.machine().lower() in ("x86_64", "amd64"):
        if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
            isas.append("avx512")
        if {"avx2", "fma", "bmi2"} <= flags:
            isas.append("avx2")
    return isas + ["portable"]


def machine_isa() -> str:
    """The build `load` uses: JAXNETS_NATIVE_ISA if set (and runnable here), else the best one."""
    forced = os.environ.get("JAXNETS_NATIVE_ISA", "").strip().lower()
    runnable = runnable_isas()
    if forced and forced not in ISAS:
        raise ValueError(f"JAXNETS_NATIVE_ISA must be one of {sorted(ISAS)}, got {forced!r}")
    if forced and forced not in runnable:
        warnings.warn(f"jaxnets: JAXNETS_NATIVE_ISA={forced} cannot run on this CPU; using {runnable[0]}",
                      stacklevel=2)
        forced = ""
    return forced or runnable[0]


def _cpu_signature() -> str:
    """Model name and feature flags (-mtune=native tunes for this CPU; the choice cache is per CPU)."""
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


def _build(name: str, source: Path, compiler: str, isa: str) -> Path:
    target_flags, macros = ISAS[isa]
    flags = target_flags + [f"-D{k}={v}" for k, v in macros.items()]
    # The headers beside the kernels (native_kernels.h) are part of every build.
    text = source.read_bytes() + b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))
    key = hashlib.sha256(text + jax.__version__.encode() + " ".join(flags).encode()
                         + _cpu_signature().encode() + compiler.encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}-{isa}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, "-O3", *flags, "-std=c++17", "-shared", "-fPIC", "-w",
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
def load(name: str, isa: str | None = None) -> ctypes.CDLL | None:
    """The compiled `<name>.cc` of this folder for `isa` (default `machine_isa()`), or None where
    native kernels are unavailable."""
    if not enabled():
        return None
    compiler = _compiler()
    if compiler is None:
        warnings.warn(f"jaxnets: no C++ compiler found; native kernel {name!r} disabled, using XLA's path",
                      stacklevel=2)
        return None
    try:
        return ctypes.cdll.LoadLibrary(str(_build(name, HERE / f"{name}.cc", compiler, isa or machine_isa())))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f"jaxnets: native kernel {name!r} disabled, using XLA's path: {err}", stacklevel=2)
        return None


def call(target: str, result_shapes, *args, **attrs):
    """`jax.ffi.ffi_call` of a native target whose results are float32 arrays of `result_shapes`
    (under vmap, once per element)."""
    results = tuple(jax.ShapeDtypeStruct(tuple(s), jnp.float32) for s in result_shapes)
    return jax.ffi.ffi_call(target, results, vmap_method="sequential")(*args, **attrs)


@functools.cache
def ffi_target(name: str, symbol: str, isa: str | None = None) -> str | None:
    """Register `symbol` of kernel library `name` as a CPU FFI target; its target name, or None.

    Without `isa`, this machine's build (`machine_isa()`) under the name `jaxnets_<name>_<symbol>`,
    the same on every machine: a program that calls it is the same program on AVX-512, AVX2 or
    ARM hosts, each running its own build (as XLA's own kernels differ by host). With `isa`, that
    build under `jaxnets_<name>_<symbol>_<isa>` (tests compare the builds in one process)."""
    lib = load(name, isa or machine_isa())
    if lib is None:
        return None
    target = f"jaxnets_{name}_{symbol}" + (f"_{isa}" if isa else "")
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return target

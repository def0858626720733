"""CPU devices of this process: per-core single-threaded devices and the rule that picks them.

Must run before JAX initialises its backends (`jaxnets train` calls `auto_cpu_devices` before
anything touches a device).
"""
from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os

from jax._src import xla_bridge

from jaxnets.parallel.distributed import detected_cluster, multi_process_expected


def one_device_per_core(count: int | None = None) -> int:
    """Expose the host's cores as `count` (default: all) CPU devices, each single-threaded.

    Why: XLA:CPU spreads one program's ops over threads op by op, which scales poorly for
    the many small convolutions and elementwise ops of a training step; data parallelism
    over per-core devices (the trainer shards the batch over every device of its mesh, and
    batch norm statistics stay global because the step is one sharded program) splits the
    work once (a ResNet step runs about a third faster; docs/cpu_choices.md, `python -m
    benchmarks.resnet_step --cpu-devices 2`). Must run before JAX initialises its backends; a no-op (returning
    the current count) if XLA_FLAGS already fixes the device count. `jaxnets train` does
    it when the experiment's `cpu_devices` (or JAXNETS_CPU_DEVICES) asks (`auto_cpu_devices`).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return int(flags.split("xla_force_host_platform_device_count=")[1].split()[0])
    if xla_bridge.backends_are_initialized():
        raise RuntimeError("one_device_per_core() must run before JAX initialises its backends "
                           "(before the first jax.devices() or computation)")
    count = count or usable_cores()
    os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count={count}"
                               " --xla_cpu_multi_thread_eigen=false").strip()
    return count


def single_threaded_cpu() -> bool:
    """Whether XLA:CPU runs each device on one thread (XLA_FLAGS as `one_device_per_core` sets
    them). Some CPU code paths pay only there: see jaxnets.nn.conv and jaxnets.kernels."""
    return "--xla_cpu_multi_thread_eigen=false" in os.environ.get("XLA_FLAGS", "")


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or a cgroup)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


# Device files of the accelerators jaxnets knows, looked for before any backend starts: an
# installed plugin alone (libtpu comes with `pip install jaxnets[tpu]`, for `jaxnets compile`
# on a CPU host) must not turn off the CPU choices of a machine that has no such chip.
ACCELERATOR_DEVICE_FILES = {"tpu": ("/dev/accel*", "/dev/vfio/[0-9]*"),
                            "cuda": ("/dev/nvidia[0-9]*",), "rocm": ("/dev/kfd",)}


def _present(kind: str) -> bool:
    return any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICE_FILES[kind])


def accelerator_expected() -> bool:
    """Whether JAX may pick a GPU/TPU backend (checked without initialising any backend): an
    explicit JAX_PLATFORMS, else an installed plugin whose chip's device files exist (a plugin
    jaxnets does not know counts as present)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0] != "cpu"
    if importlib.util.find_spec("libtpu") is not None and _present("tpu"):
        return True
    for plugin in importlib.metadata.entry_points(group="jax_plugins"):
        kind = next((k for k in ("cuda", "rocm", "tpu") if k in plugin.name.lower()), None)
        if kind is None or _present(kind):
            return True
    return False


def cpu_devices_setting(value: str | None = None) -> str:
    """JAXNETS_CPU_DEVICES if set, else `value` (a config's `cpu_devices`, default "1"), checked:
    'auto', 'cores' or a positive number; ValueError otherwise."""
    setting = (os.environ.get("JAXNETS_CPU_DEVICES", "").strip() or str(value or "1")).strip()
    if setting not in ("auto", "cores") and not (setting.isdigit() and int(setting) > 0):
        raise ValueError(f"cpu_devices (JAXNETS_CPU_DEVICES or --config.cpu_devices) must be "
                         f"'auto', 'cores' or a positive number, got {setting!r}")
    return setting


def even_split(batch_sizes, cap: int) -> int:
    """The largest device count <= cap that divides every batch size (at least 1)."""
    return max(d for d in range(1, max(cap, 1) + 1) if all(b % d == 0 for b in batch_sizes))


def auto_cpu_devices(batch_sizes, value: str | None = None, limit: int = 0) -> int:
    """Set up the CPU devices for a run whose batches are `batch_sizes`; returns their count.

    The setting (`cpu_devices_setting(value)`): "1" leaves JAX's single multi-threaded CPU
    device; "cores" or "N" force a count; "auto" applies the rule below.

    The rule for "auto" (per-core devices only where measurements say they win):
    1. Only on a CPU-only, single-process run: with a GPU/TPU plugin or in a multi-process
       job JAX's own layout stays (the devices are not ours to split).
    2. Only for steps made of large convolutions and matmuls, which the experiment states by
       setting cpu_devices="auto" (resnet_cifar, mnist_cnn); the default "1" covers the
       rest. Per-core devices made the ResNet and CNN runs faster but the LSTM, GAN, VAE and
       DDPM runs slower (docs/cpu_choices.md): chains of small sequential ops lose, because a single-threaded device cannot spread them, while XLA's intra-op
       pool can. The Transformer LM won per-core until its attention and weight gradients
       became plain matmuls, which XLA's pool threads well: it now runs on one device
       (`python -m benchmarks.transformer_step --set cpu_devices=auto` vs the default).
    3. Only where every batch splits evenly: the largest count <= the usable cores (and <=
       `limit` when the config caps its devices) that divides every batch size.
    Under load the rule still held on this project's AVX-512 machine: ResNet-20 step at load
    average 19-20 on 2 cores, per-core / one device 0.79, 0.88, 1.26 (median 0.88;
    `python -m benchmarks.cpu_layout`, benchmarks/results/cpu_layout.json). A machine where it
    does not hold is measured with that benchmark and run with JAXNETS_CPU_DEVICES=1.
    """
    setting = cpu_devices_setting(value)
    if setting == "auto":
        # Per-core devices are a single-host trick: every multi-process job (launcher, explicit
        # variables or a detected cluster) keeps JAX's own devices.
        if accelerator_expected() or multi_process_expected() or detected_cluster():
            return 1
        cores = usable_cores()
        count = even_split(batch_sizes, min(cores, limit or cores))
        return one_device_per_core(count) if count > 1 else 1
    if setting == "1":   # JAX's own single (multi-threaded) CPU device
        return 1
    return one_device_per_core(None if setting == "cores" else int(setting))

"""jaxnets.platform: the malloc settings (freed large buffers reused without page faults) and the
CPU device layout."""
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import ctypes, os, resource, sys
    from jaxnets.platform import allocator
    applied = allocator.tune_host_allocator()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    n = 64 << 20   # above glibc's largest dynamic mmap threshold (32 MiB)
    def touch_once():
        p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)
    touch_once()   # first use faults pages in either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch_once()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def probe(env_value):
    env = {**os.environ, "JAXNETS_HOST_ALLOCATOR": env_value}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_tuned_allocator_reuses_freed_pages():
    tuned, tuned_faults = probe("tuned")
    default, default_faults = probe("default")
    assert tuned and not default
    pages = (64 << 20) // 4096
    # Default glibc maps a 64 MiB block afresh each time: one fault per 4 KiB page (fewer
    # only where the kernel backs it with huge pages). Tuned, the same pages come back.
    assert tuned_faults < pages // 100
    assert default_faults > tuned_faults


def test_one_device_per_core_splits_the_host_before_backend_init_only():
    probe = textwrap.dedent("""
        import jax
        from jaxnets.platform import devices
        n = devices.one_device_per_core(3)
        print(n, jax.device_count(), "xla_cpu_multi_thread_eigen=false" in __import__("os").environ["XLA_FLAGS"])
        try:
            import os; os.environ["XLA_FLAGS"] = ""   # forget the flag: now the init check must fire
            devices.one_device_per_core(2)
        except RuntimeError as e:
            print("refused")
    """)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert out == ["3", "3", "True", "refused"]


def test_even_split_takes_the_largest_dividing_count():
    from jaxnets.platform.devices import even_split
    assert even_split([128, 256], 2) == 2
    assert even_split([128], 16) == 16
    assert even_split([96, 100], 12) == 4      # 12, 8, 6 do not divide both; 4 does
    assert even_split([7], 6) == 1
    assert even_split([64], 0) == 1


@pytest.mark.parametrize("env_setting,config_setting,batch", [
    ("", "auto", 128), ("auto", "1", 128), ("", "auto", 3), ("1", "auto", 128), ("", None, 128)])
def test_auto_cpu_devices_follows_the_setting(env_setting, config_setting, batch):
    """JAXNETS_CPU_DEVICES wins over the config's cpu_devices; the config default is "1"."""
    from jaxnets.platform.devices import even_split, usable_cores
    probe = textwrap.dedent(f"""
        from jaxnets.platform import devices
        n = devices.auto_cpu_devices([{batch}], {config_setting!r})
        import jax
        print(n, jax.device_count())
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXNETS_CPU_DEVICES")}
    env.update(JAXNETS_CPU_DEVICES=env_setting, JAX_PLATFORMS="cpu")
    setting = env_setting or config_setting or "1"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    expected = even_split([batch], usable_cores()) if setting == "auto" else int(setting)
    assert out == [str(expected), str(expected)]


def test_malformed_cpu_devices_setting_exits_2():
    env = {**os.environ, "JAXNETS_CPU_DEVICES": "many"}
    run = subprocess.run([sys.executable, "-m", "jaxnets.cli", "list"], capture_output=True,
                         text=True, env=env)
    assert run.returncode == 2 and "JAXNETS_CPU_DEVICES" in run.stderr


def test_constructing_a_trainer_changes_nothing_global(tmp_path):
    """Process-wide settings are the CLI's (jaxnets.platform.install): a Trainer built in a
    notebook leaves malloc, JAX's compilation cache, loggers, sys.unraisablehook and the
    garbage collector alone."""
    probe = textwrap.dedent(f"""
        import gc, logging, sys
        import jax
        from jaxnets.config import apply_overrides, load_config
        from jaxnets.platform import allocator
        from jaxnets.train.trainer import Trainer
        def snapshot():
            return (sys.unraisablehook, jax.config.jax_compilation_cache_dir, allocator._applied,
                    [list(logging.getLogger(n).filters) for n in ("absl", "asyncio")],
                    gc.get_freeze_count() > 0)
        before = snapshot()
        config = apply_overrides(load_config("experiments/mnist_cnn.py:smoke"), ["train.steps=1"])
        Trainer(config, {str(tmp_path / "w")!r})
        print("unchanged" if snapshot() == before else f"changed: {{before}} -> {{snapshot()}}")
        from jaxnets.platform.install import install_process_settings
        install_process_settings()
        print("installed" if snapshot() != before else "install did nothing")
        print("frozen" if gc.get_freeze_count() > 0 else "gc not frozen")
    """)
    env = {**os.environ, "JAXNETS_CACHE": str(tmp_path / "cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-3:] == ["unchanged", "installed", "frozen"], run.stdout


def test_compilation_cache_folder_follows_the_kernel_sources(tmp_path):
    """Programs calling native kernels through custom_partitioning are cached without the kernel
    call in their key, so the cache folder is one per version of the kernels' sources: a changed
    source gives another folder, and other versions' folders (and the flat layout before) go."""
    import shutil

    from jaxnets.platform import compile_cache
    kernels = tmp_path / "kernels"
    shutil.copytree(compile_cache.KERNELS, kernels, ignore=shutil.ignore_patterns("__pycache__"))
    before = compile_cache.kernels_digest(kernels)
    assert before == compile_cache.kernels_digest(compile_cache.KERNELS)
    source = kernels / "conv3x3_forward.cc"
    source.write_text(source.read_text() + "\n// changed\n")
    changed = compile_cache.kernels_digest(kernels)
    assert changed != before
    (kernels / "notes.txt").write_text("not a source")          # other files do not count
    assert compile_cache.kernels_digest(kernels) == changed

    root = tmp_path / "xla"
    (root / "kernels-old").mkdir(parents=True)
    (root / "kernels-old" / "program").write_bytes(b"x")
    (root / "flat-program").write_bytes(b"x")
    keep = root / before
    keep.mkdir()
    (keep / "program").write_bytes(b"x")
    compile_cache._remove_other_versions(root, str(keep))
    assert sorted(p.name for p in root.iterdir()) == [before]
    assert (keep / "program").exists()

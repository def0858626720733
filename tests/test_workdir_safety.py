"""Never lose progress, one writer per workdir, read-only commands, CPU thread settings (issue
#23 items 1-3, 6): real `jaxnets` subprocesses on a tiny CNN over sklearn's 8x8 digits. Concurrent
runs, permission errors, launcher kills and cloud workdirs are fault cases: tests/test_faults.py."""
import glob
import json
import os
import subprocess
import sys

import pytest

from benchmarks.faults import suite as faults
from jaxnets.platform import cpu_threads
from jaxnets.train.workdir_lock import LOCK_NAME


def _damage_every_checkpoint(workdir):
    for part in glob.glob(os.path.join(workdir, "checkpoints", "[0-9]*")):
        arrays = glob.glob(os.path.join(part, "state", "**", "d", "*"), recursive=True)
        biggest = max(arrays, key=os.path.getsize)
        os.truncate(biggest, os.path.getsize(biggest) // 2)


def _listing(directory):
    return sorted((os.path.relpath(os.path.join(root, f), directory), os.path.getsize(os.path.join(root, f)))
                  for root, _, files in os.walk(directory) for f in files)


def test_damaged_workdir_is_refused_on_every_rerun_until_starting_over_is_asked(tmp_path):
    workdir = str(tmp_path / "w")
    first = faults.run(workdir)
    assert first.returncode == 0, first.stderr
    metrics = open(os.path.join(workdir, "metrics.jsonl"), "rb").read()
    steps = sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    _damage_every_checkpoint(workdir)
    for attempt in range(2):   # the second rerun finds only corrupt-STEP folders: still refused
        out = faults.run(workdir)
        assert out.returncode == 2, (attempt, out.stdout, out.stderr)
        assert "accept_lost_checkpoints" in out.stderr and "Traceback" not in out.stderr
        assert open(os.path.join(workdir, "metrics.jsonl"), "rb").read() == metrics
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == sorted(f"corrupt-{s}" for s in steps)
    digest = faults.final(workdir)["param_digest"]
    again = faults.run(workdir, "--config.train.accept_lost_checkpoints=True")
    assert again.returncode == 0, again.stderr
    assert faults.final(workdir)["param_digest"] == digest   # from step 0 again: the same run
    assert faults.train_steps(workdir) == list(range(1, faults.STEPS + 1))


def test_a_dead_holders_lock_is_taken_over_with_a_message(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    with open(workdir / LOCK_NAME, "w") as f:   # what a holder killed by SIGKILL leaves behind
        json.dump({"host": "elsewhere", "pid": 999999, "started": 0}, f)
    out = faults.run(str(workdir))
    assert out.returncode == 0, out.stderr
    assert "Taking over the lock" in out.stdout and "pid 999999" in out.stdout
    assert os.path.getsize(workdir / LOCK_NAME) == 0   # released at the end


def test_eval_with_a_damaged_newest_checkpoint_changes_nothing_and_names_its_step(tmp_path):
    workdir = str(tmp_path / "w")
    assert faults.run(workdir).returncode == 0
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    arrays = glob.glob(os.path.join(workdir, "checkpoints", str(steps[-1]), "state", "**", "d", "*"),
                       recursive=True)
    os.truncate(arrays[0], 1)
    before = _listing(os.path.join(workdir, "checkpoints"))
    out = subprocess.run([sys.executable, "-m", "jaxnets.cli", "eval", "--workdir", workdir],
                         cwd=faults.REPO, env=faults._env(), text=True, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert _listing(os.path.join(workdir, "checkpoints")) == before
    assert f"Evaluated checkpoint step {steps[-2]}" in out.stdout
    assert json.load(open(os.path.join(workdir, "eval_test.json")))["step"] == steps[-2]


@pytest.mark.parametrize("flags,processes,cores,expected", [
    ("", 1, 2, []),                                                  # JAX's one device
    ("--xla_force_host_platform_device_count=4", 1, 8,               # devices share a process
     [cpu_threads.SINGLE_THREAD, *cpu_threads.PATIENT_COLLECTIVES]),
    ("", 4, 2, [cpu_threads.SINGLE_THREAD]),                         # more devices than cores
    ("--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=true", 1, 2,
     list(cpu_threads.PATIENT_COLLECTIVES)),                         # the user's choice stays
])
def test_cpu_thread_rule(flags, processes, cores, expected):
    assert cpu_threads.cpu_thread_flags(flags, processes, cores) == expected

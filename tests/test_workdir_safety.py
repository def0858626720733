"""Never lose progress, one writer per workdir, read-only commands, ranks that die with their
launcher, CPU thread settings (issue #23 items 1-3, 6): real `jaxnets` subprocesses on a tiny
CNN over sklearn's 8x8 digits."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from benchmarks.faults import suite as faults
from jaxnets.parallel import cpu_threads
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


def test_unreadable_checkpoint_stops_with_exit_2_and_nothing_moved(tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("needs util-linux's setpriv to drop root's file-permission override")
    workdir = str(tmp_path / "w")
    assert faults.run(workdir).returncode == 0
    os.remove(os.path.join(workdir, "final.json"))
    newest = os.path.join(workdir, "checkpoints", str(faults.STEPS))
    for path in glob.glob(os.path.join(newest, "state", "**", "d", "*"), recursive=True):
        os.chmod(path, 0)
    before = _listing(os.path.join(workdir, "checkpoints"))
    argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all",
            *faults.command(workdir)]
    out = subprocess.run(argv, cwd=faults.REPO, env=faults._env(), text=True, capture_output=True,
                         timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "PERMISSION_DENIED" in out.stderr and newest in out.stderr and "nothing was moved" in out.stderr
    assert _listing(os.path.join(workdir, "checkpoints")) == before


def test_second_writer_exits_2_naming_the_first_and_a_dead_holder_is_taken_over(tmp_path):
    workdir = str(tmp_path / "w")
    slow = subprocess.Popen(faults.command(workdir), cwd=faults.REPO, text=True,
                            env=faults._env({"JAXNETS_FAULT_STEP_DELAY_S": "0.2"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = os.path.join(workdir, LOCK_NAME)
    deadline = time.time() + 120
    while not (os.path.exists(lock) and os.path.getsize(lock)):
        assert slow.poll() is None and time.time() < deadline, slow.communicate()
        time.sleep(0.1)
    t0 = time.time()
    second = faults.run(workdir)
    assert second.returncode == 2 and time.time() - t0 < 30, second.stderr
    assert f"pid {slow.pid}" in second.stderr and "in use" in second.stderr
    out, err = slow.communicate(timeout=600)
    assert slow.returncode == 0, err
    # A holder killed without releasing leaves its record; the next run takes over and says so.
    with open(lock, "w") as f:
        json.dump({"host": "elsewhere", "pid": 999999, "started": 0}, f)
    os.remove(os.path.join(workdir, "final.json"))
    third = faults.run(workdir)
    assert third.returncode == 0, third.stderr
    assert "Taking over the lock" in third.stdout and "pid 999999" in third.stdout


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


def test_ranks_die_within_seconds_of_a_killed_launcher(tmp_path):
    launcher = subprocess.Popen(
        [sys.executable, "-m", "jaxnets.cli", "launch", "--processes", "2", "--devices-per-process", "1",
         "--", "train", *faults.TINY, "--workdir", str(tmp_path / "w")],
        cwd=faults.REPO, env=faults._env({"JAXNETS_FAULT_STEP_DELAY_S": "0.2"}), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = tmp_path / "w" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.stat().st_size):   # training is under way
        assert launcher.poll() is None and time.time() < deadline, launcher.stdout.read()
        time.sleep(0.2)
    ranks = [int(p) for p in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                             text=True).stdout.split()]
    assert len(ranks) == 2
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.time() + 10
    alive = ranks
    while alive and time.time() < deadline:
        alive = [r for r in ranks if os.path.exists(f"/proc/{r}") and
                 open(f"/proc/{r}/stat").read().split()[2] != "Z"]
        time.sleep(0.2)
    assert not alive, f"ranks {alive} outlived their launcher"


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

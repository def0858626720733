"""Kill a training process (SIGKILL, SIGTERM) mid-run; the resumed run ends bit-identical."""
import json
import os
import signal
import subprocess
import sys
import time

from helpers import REPO

ARGS = ["--config", "experiments/mnist_cnn.py:smoke", "--config.data.name=digits",
        "--config.model.features=(8,16)", "--config.model.hidden=32", "--config.train.steps=60",
        "--config.train.checkpoint_every=10", "--config.train.eval_every=60",
        "--config.data.batch_size=32", "--config.data.eval_batch_size=64"]
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", PYTHONUNBUFFERED="1")


def _start(workdir):
    return subprocess.Popen([sys.executable, "-m", "jaxnets.cli", "train", *ARGS, "--workdir", str(workdir)],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(workdir, step, proc, timeout=240):
    path = os.path.join(workdir, "checkpoints", str(step))
    deadline = time.time() + timeout
    while not os.path.isdir(path):  # orbax renames the finished temp dir into place
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def _finish(workdir):
    proc = _start(workdir)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out, json.load(open(os.path.join(workdir, "final.json")))


def test_sigkill_and_sigterm_resume_bit_identical(tmp_path):
    _, reference = _finish(tmp_path / "straight")

    proc = _start(tmp_path / "killed")
    _wait_for_checkpoint(tmp_path / "killed", 20, proc)
    proc.kill()
    proc.wait()
    assert not os.path.exists(tmp_path / "killed" / "final.json")
    out, resumed = _finish(tmp_path / "killed")
    assert "Resumed from" in out
    assert resumed["param_digest"] == reference["param_digest"]
    assert resumed["metrics"]["eval/accuracy"] == reference["metrics"]["eval/accuracy"]

    proc = _start(tmp_path / "termed")
    _wait_for_checkpoint(tmp_path / "termed", 10, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "saved checkpoint at step" in out and "Traceback" not in out, out
    out, resumed = _finish(tmp_path / "termed")
    assert resumed["param_digest"] == reference["param_digest"]

    # Ctrl-C saves like SIGTERM, and a second signal while the save runs does not cut it short.
    proc = _start(tmp_path / "interrupted")
    _wait_for_checkpoint(tmp_path / "interrupted", 10, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "saved checkpoint at step" in out and "Traceback" not in out, out
    out, resumed = _finish(tmp_path / "interrupted")
    assert resumed["param_digest"] == reference["param_digest"]

    # A signal while the run starts (before its loop) is honoured once training runs: step 0.
    proc = _start(tmp_path / "early")
    for line in proc.stdout:
        if line.startswith("jaxnets: "):   # joined, building the state: the loop has not begun
            proc.send_signal(signal.SIGTERM)
            break
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "saved checkpoint at step 0" in out and "Traceback" not in out, out
    out, resumed = _finish(tmp_path / "early")
    assert resumed["param_digest"] == reference["param_digest"]

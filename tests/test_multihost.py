"""Two processes x 2 CPU devices on localhost (jax.distributed, gloo) train exactly like one
process with 4 devices: each process feeds only its share of every global batch."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from helpers import REPO

ARGS = ["train", "--config", "experiments/mnist_cnn.py:smoke", "--config.data.name=digits",
        "--config.model.features=(8,16)", "--config.model.hidden=32", "--config.train.steps=8",
        "--config.train.checkpoint_every=4", "--config.train.eval_every=8", "--config.train.log_every=1",
        "--config.optim.warmup_steps=0", "--config.data.batch_size=32", "--config.data.eval_batch_size=64"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, devices, extra_env):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra_env)
    return subprocess.Popen([sys.executable, "-m", "jaxnets.cli", *ARGS, "--workdir", str(workdir)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return np.array([r["train/loss"] for r in rows if "train/loss" in r])


def test_two_processes_match_one_process(tmp_path):
    port = _free_port()
    procs = [_launch(tmp_path / "multi", 2, {"JAXNETS_COORDINATOR": f"127.0.0.1:{port}",
                                             "JAXNETS_NUM_PROCESSES": "2", "JAXNETS_PROCESS_ID": str(i)})
             for i in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    single = _launch(tmp_path / "single", 4, {})
    out = single.communicate(timeout=400)[0]
    assert single.returncode == 0, out
    multi_losses, single_losses = _losses(tmp_path / "multi"), _losses(tmp_path / "single")
    assert len(multi_losses) == 8
    np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
    final_m = json.load(open(tmp_path / "multi" / "final.json"))
    final_s = json.load(open(tmp_path / "single" / "final.json"))
    assert final_m["metrics"]["eval/accuracy"] == final_s["metrics"]["eval/accuracy"]

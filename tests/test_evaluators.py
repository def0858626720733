"""Evaluators (jaxnets/evaluators): run by the trainer on a schedule and at the end, on the
sharded state; the image judge loads its classifier read-only and scores like the trainer's eval;
under two processes the judge's metrics equal one process's."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.faults.suite import checkpoint_arrays
from helpers import run_cli, tiny_config
from jaxnets.evaluators import EVALUATORS, Evaluator
from jaxnets.evaluators import image_judge
from jaxnets.tasks.common import heldout_images
from jaxnets.train.trainer import Trainer, train


class ParamSquares(Evaluator):
    """Sum of squared parameters, computed on the sharded state through `context.call`."""

    def __call__(self, state, context):
        params = nnx.state(state.model, nnx.Param)
        total = context.call(lambda p: sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p)), params)
        return {"eval/param_squares": float(total), "eval/evaluated_step": context.step}


EVALUATORS.register("test_param_squares", "test_evaluators:ParamSquares")


def _rows(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_evaluator_runs_on_its_schedule_and_at_the_end(tmp_path):
    config = tiny_config(steps=8, model="mlp", checkpoint_every=4, keep_checkpoints=3)
    config.evals = {"norm": {"kind": "test_param_squares", "every": 3}}
    final = train(config, str(tmp_path))
    rows = [r for r in _rows(tmp_path) if "eval/param_squares" in r]
    assert [r["step"] for r in rows] == [3, 6, 8]               # every 3 steps, then the end
    assert [r["eval/evaluated_step"] for r in rows] == [3, 6, 8]
    # The end value against float64 NumPy over the final checkpoint's parameters.
    arrays = checkpoint_arrays(str(tmp_path), 8)
    expected = sum(np.sum(np.square(np.asarray(x, np.float64))) for k, x in arrays.items()
                   if k.startswith("['model']") and not k.endswith("['key']") and not k.endswith("['count']"))
    np.testing.assert_allclose(final["metrics"]["eval/param_squares"], expected, rtol=1e-5)
    np.testing.assert_allclose(rows[-1]["eval/param_squares"], expected, rtol=1e-5)


def _tiny_judge_config():
    c = tiny_config(steps=30, model="cnn")
    c.train.report = False
    return c


def test_judge_loads_read_only_and_scores_as_the_trainer_evaluated(tmp_path, monkeypatch):
    monkeypatch.setattr(image_judge, "judge_config", _tiny_judge_config)
    judge_dir = str(tmp_path / "judge")
    final = train(_tiny_judge_config(), judge_dir)
    before = sorted((root, sorted(files)) for root, _, files in os.walk(judge_dir))
    judge = image_judge.ImageJudge.load(judge_dir)
    assert sorted((root, sorted(files)) for root, _, files in os.walk(judge_dir)) == before
    trainer = Trainer(_tiny_judge_config(), str(tmp_path / "probe"), read_only=True)
    x, labels = heldout_images(trainer.dataset, "test", 10_000)
    scores = judge.score(x, labels)
    # The same network and weights as the trainer's eval: the same held-out accuracy.
    assert judge.heldout_accuracy == final["metrics"]["eval/accuracy"]
    assert abs(scores["class_accuracy"] - final["metrics"]["eval/accuracy"]) <= 1.0 / len(x)
    assert 0.0 < scores["coverage"] <= 1.0


def test_image_judge_under_two_processes_matches_one_process(tmp_path):
    """The shipped judge (experiments/mnist_cnn.py:smoke's network, a few steps here) scores a
    VAE's samples at the end of a 2-process job exactly as in one process (#23 item 5)."""
    config = image_judge.judge_config()
    config.train.steps = 3
    config.train.eval_every = 3
    config.train.checkpoint_every = 3
    config.cpu_devices = "1"
    judge_dir = str(tmp_path / "judge")
    judge_final = train(config, judge_dir)
    common = ["--config", "experiments/vae_mnist.py:smoke", f"--config.evals.judge.judge_dir={judge_dir}",
              "--config.train.steps=3", "--config.train.log_every=1", "--config.train.report=False",
              "--config.train.progress=False"]
    multi = run_cli("launch", "--processes", "2", "--devices-per-process", "1", "--", "train", *common, "--workdir",
                    str(tmp_path / "multi"), timeout=600)
    assert multi.returncode == 0, multi.stdout[-3000:] + multi.stderr[-3000:]
    single = run_cli("train", *common, "--workdir", str(tmp_path / "single"),
                     env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    m = json.load(open(tmp_path / "multi" / "final.json"))["metrics"]
    s = json.load(open(tmp_path / "single" / "final.json"))["metrics"]
    judged = sorted(k for k in s if k.startswith(("eval/prior_samples_", "eval/vae_interpolation_")))
    assert "eval/prior_samples_frechet" in judged and "eval/vae_interpolation_confidence" in judged
    assert m["eval/judge_heldout_accuracy"] == judge_final["metrics"]["eval/accuracy"]
    for key in judged:
        np.testing.assert_allclose(m[key], s[key], rtol=1e-4, err_msg=key)

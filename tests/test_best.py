"""Best checkpoint and early stopping (jaxnets/train/best.py) through the real trainer on 8x8 digits."""
import json
import os

import pytest

from jaxnets.errors import UserError
from jaxnets.train.best import restore_best
from jaxnets.train.trainer import Trainer, train
from helpers import tiny_config


def _evals(workdir, key="eval/loss"):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r[key] for r in rows if key in r}


def test_best_step_is_the_argmin_of_the_logged_evaluations(tmp_path):
    c = tiny_config(steps=12, model="mlp", eval_every=2, best_metric="eval/loss", best_mode="min")
    final = train(c, str(tmp_path))
    evals = _evals(tmp_path)
    assert sorted(evals) == [2, 4, 6, 8, 10, 12]
    best_step = min(evals, key=evals.get)
    assert final["best_step"] == best_step and final["best_value"] == pytest.approx(evals[best_step])
    assert json.load(open(tmp_path / "final.json"))["best_step"] == best_step
    assert os.listdir(tmp_path / "best" / str(best_step))
    # The stored state is the best one: evaluating it reproduces the best value.
    fresh = Trainer(c, str(tmp_path))
    assert restore_best(fresh) == best_step
    assert fresh.evaluate()["loss"] == pytest.approx(evals[best_step], rel=1e-5)


def test_early_stopping_stops_keeps_best_and_stays_stopped_on_resume(tmp_path):
    # Loss falls as it trains, so in "max" mode only the first evaluation is ever the best:
    # after `patience` evaluations without improvement the run must stop.
    c = tiny_config(steps=40, model="mlp", eval_every=2, checkpoint_every=40,
                    best_metric="eval/loss", best_mode="max", early_stopping_patience=2)
    final = train(c, str(tmp_path))
    assert final["step"] == 6 and final["early_stopped"] is True
    assert final["best_step"] == 2 and final["best_value"] == pytest.approx(_evals(tmp_path)[2])
    assert sorted(_evals(tmp_path)) == [2, 4, 6]
    assert "6" in os.listdir(tmp_path / "checkpoints")   # the stopping step is saved for resume
    again = train(c, str(tmp_path))
    assert again["step"] == 6 and again["best_step"] == 2 and again["early_stopped"] is True


def test_resume_keeps_the_best_so_far(tmp_path):
    c = tiny_config(steps=6, model="mlp", eval_every=2, checkpoint_every=2,
                    best_metric="eval/accuracy", best_mode="max")
    first = train(c, str(tmp_path))
    c.train.steps = 10
    second = train(c, str(tmp_path))
    evals = _evals(tmp_path, "eval/accuracy")
    best = max(v for v in evals.values())
    best_step = min(s for s, v in evals.items() if v == best)   # ties: the earliest stays best
    assert second["best_value"] == pytest.approx(best) and second["best_step"] == best_step
    assert second["best_value"] >= first["best_value"]


def test_patience_without_metric_is_refused(tmp_path):
    with pytest.raises(UserError, match="best_metric"):
        train(tiny_config(steps=2, model="mlp", early_stopping_patience=2), str(tmp_path))
    with pytest.raises(UserError, match="eval/nope"):
        train(tiny_config(steps=2, model="mlp", best_metric="eval/nope"), str(tmp_path / "b"))

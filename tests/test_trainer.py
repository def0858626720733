"""The trainer on 8 forced CPU devices: compile-once, 1-vs-8-device equivalence, optimizer knobs."""
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from jaxnets.errors import UserError
from jaxnets.train.optim import make_schedule, make_tx
from jaxnets.train.trainer import Trainer, train
from helpers import tiny_config


def _losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return np.array([r["train/loss"] for r in rows if "train/loss" in r])


def test_train_step_compiles_once(tmp_path):
    trainer = Trainer(tiny_config(), str(tmp_path))
    from jaxnets.data.pipeline import TrainIterator
    it = TrainIterator(trainer.dataset.splits["train"], 32, 0)
    for step in range(6):
        trainer.step(next(it), step)
    trainer.evaluate()
    trainer.evaluate()
    assert trainer.jit_train_step._cache_size() == 1
    assert trainer.jit_eval_step._cache_size() == 1


def test_one_device_equals_eight_devices(tmp_path):
    assert len(jax.devices()) == 8
    results = {}
    for n in (1, 8):
        c = tiny_config(steps=20)
        c.mesh_devices = n
        final = train(c, str(tmp_path / f"d{n}"))
        results[n] = (_losses(tmp_path / f"d{n}"), final)
    l1, l8 = results[1][0], results[8][0]
    assert len(l1) == 20
    np.testing.assert_allclose(l8, l1, rtol=1e-4)
    assert l1[-1] < l1[0]  # it trains
    assert results[1][1]["metrics"]["eval/accuracy"] == pytest.approx(
        results[8][1]["metrics"]["eval/accuracy"], abs=1e-3)


def test_final_json_and_eval_metrics_match_numpy(tmp_path):
    final = train(tiny_config(steps=30), str(tmp_path))
    on_disk = json.load(open(tmp_path / "final.json"))
    assert on_disk["step"] == 30 and len(on_disk["param_digest"]) == 64
    cm = np.array(on_disk["metrics"]["eval/confusion_matrix"])
    from jaxnets.data import load_dataset
    n_test = load_dataset("digits").size("test")
    assert n_test % 64 and cm.sum() == n_test  # every held-out digit counted once, padding excluded
    assert on_disk["metrics"]["eval/accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert final["param_digest"] == on_disk["param_digest"]
    assert os.listdir(tmp_path / "tensorboard")


def test_gradient_accumulation_equals_big_batch(tmp_path):
    """2 accumulated micro-batches of 16 == one batch of 32 (mean loss, no dropout/BN)."""
    big = tiny_config(steps=3, model="mlp")
    big.optim.name = "sgd"
    big.optim.lr = 0.5
    acc = tiny_config(steps=6, model="mlp")
    acc.optim.name, acc.optim.lr, acc.optim.accumulate_steps = "sgd", 0.5, 2
    acc.data.batch_size = 16
    a = Trainer(big, str(tmp_path / "big"))
    a.run()
    b = Trainer(acc, str(tmp_path / "acc"))
    b.run()
    pa = nnx.to_pure_dict(nnx.state(a.module().model, nnx.Param))
    pb = nnx.to_pure_dict(nnx.state(b.module().model, nnx.Param))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), pa, pb)


def test_clipping_and_schedules():
    c = tiny_config().optim
    c.name, c.lr, c.clip_norm = "sgd", 1.0, 0.5
    tx = make_tx(c, 100)
    grads = {"w": np.array([3.0, 4.0], np.float32)}
    updates, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(updates["w"], -np.array([0.3, 0.4]), rtol=1e-6)
    c.schedule, c.boundaries, c.decay_factor, c.lr = "piecewise", (10, 20), 0.1, 0.1
    s = make_schedule(c, 100)
    np.testing.assert_allclose([s(0), s(15), s(25)], [0.1, 0.01, 0.001], rtol=1e-6)


def test_bad_inputs_raise_user_errors(tmp_path):
    c = tiny_config()
    c.data.batch_size = 12  # not divisible by 8 devices
    with pytest.raises(UserError, match="not divisible by the 8 data-parallel"):
        Trainer(c, str(tmp_path / "a"))
    c = tiny_config()
    c.data.name = "mnist5kk"
    with pytest.raises(UserError, match="Did you mean 'mnist5k'"):
        Trainer(c, str(tmp_path / "b"))
    c = tiny_config()
    c.model.name = "resnett"
    with pytest.raises(UserError, match="Unknown model 'resnett'"):
        Trainer(c, str(tmp_path / "c"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="Cannot write to workdir"):
        Trainer(tiny_config(), str(blocker / "sub"))


def test_incompatible_checkpoint_is_refused(tmp_path):
    train(tiny_config(steps=2, model="mlp"), str(tmp_path))
    other = tiny_config(steps=4, model="mlp")
    other.model.hidden = (48,)
    with pytest.raises(UserError, match="holds a different model"):
        train(other, str(tmp_path))


def test_bfloat16_compute_keeps_float32_params(tmp_path):
    c = tiny_config(steps=15)
    c.train.compute_dtype = "bfloat16"
    trainer = Trainer(c, str(tmp_path))
    trainer.run()
    losses = _losses(tmp_path)
    assert np.all(np.isfinite(losses)) and losses[-5:].mean() < losses[:5].mean()
    params = nnx.to_pure_dict(nnx.state(trainer.module().model, nnx.Param))
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype("float32")}

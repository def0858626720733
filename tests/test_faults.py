"""Fault tolerance (docs/fault_tolerance.md): non-finite steps, strict JSON, one row per step
after resume, corrupt-checkpoint fallback, changed-data refusal, SIGKILL during an asynchronous
save, and bad input. The longer randomized suite is `python -m benchmarks.faults`."""
import glob
import json
import os
import random
import shutil
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.faults import cluster
from benchmarks.faults import suite as faults
from helpers import tiny_config
from jaxnets.errors import TrainingDiverged, UserError
from jaxnets.train import guard
from jaxnets.train.checkpoint import write_json
from jaxnets.train.metric_log import MetricWriter
from jaxnets.train.trainer import train


def _refuse(token):
    raise ValueError(f"non-strict JSON constant {token}")


def _strict_lines(path):
    with open(path) as f:
        return [json.loads(line, parse_constant=_refuse) for line in f]


# ------------------------------------------------------------------ the non-finite guard
def _sgd(state, batch, step):
    """A real least-squares SGD step on a pytree holding floats, a step count and a PRNG key."""
    loss_fn = lambda w: jnp.mean((batch["x"] @ w - batch["y"]) ** 2)   # noqa: E731
    loss, g = jax.value_and_grad(loss_fn)(state["w"])
    new = {"w": state["w"] - 0.1 * g, "count": state["count"] + 1,
           "key": jax.random.split(state["key"])[0]}
    return new, {"loss": loss, "grad_norm": jnp.linalg.norm(g), "count": new["count"]}


def _state():
    return {"w": jnp.arange(3.0), "count": jnp.int32(0), "key": jax.random.key(0)}


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if jnp.issubdtype(
        x.dtype, jax.dtypes.prng_key) else x), tree)


def test_guard_applies_finite_steps_and_skips_nonfinite_ones_bitwise():
    step = jax.jit(guard.guarded(_sgd), donate_argnums=0)
    batch = {"x": np.ones((4, 3), np.float32), "y": np.ones(4, np.float32)}
    expected, _ = jax.jit(_sgd)(_state(), batch, 0)
    new, metrics = step(_state(), batch, 0)
    jax.tree.map(np.testing.assert_array_equal, _host(new), _host(expected))   # untouched when finite
    assert float(metrics["skipped"]) == 0.0
    for bad in ({"x": batch["x"], "y": np.full(4, np.nan, np.float32)},   # non-finite loss
                {"x": np.full((4, 3), 1e30, np.float32), "y": batch["y"]}):  # gradient overflow
        before = _host(new)
        new, metrics = step(new, bad, 1)
        jax.tree.map(np.testing.assert_array_equal, _host(new), before)
        assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))


def test_monitor_stops_after_consecutive_skips_only():
    ok = {"loss": 0.5, "skipped": 0.0}
    nan = {"loss": float("nan"), "grad_norm": float("inf"), "skipped": 1.0}
    monitor = guard.NonFiniteMonitor(limit=3)
    monitor.observe(1, [ok, nan, nan, ok, nan, nan])   # streaks of 2: keep going
    monitor.raise_if_diverged()
    assert monitor.summarize({"train/skipped": 0.5})["train/skipped_steps"] == 4.0
    monitor.observe(7, [nan, ok])                      # third in a row at step 7 (streak began at 5)
    with pytest.raises(TrainingDiverged, match=r"first was step 5, where the metric 'loss'") as e:
        monitor.raise_if_diverged()
    assert e.value.exit_code == 3


def test_lr_1e9_stops_with_exit_3_and_finite_checkpoint(tmp_path):
    result = faults.nonfinite(tmp_path)
    assert result["survived"] == 1, result
    assert result["exit_code"] == 3 and result["checkpoint_finite"] and result["skipped_steps"] >= 5


# ------------------------------------------------------------------ strict JSON, one row per step
def _tb_events(path):
    """(step, session_log status) of every event in a TensorBoard file (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    out, data = [], open(path, "rb").read()
    while data:
        (n,) = struct.unpack("<Q", data[:8])
        event = event_pb2.Event.FromString(data[12:12 + n])
        out.append((event.step, event.session_log.status if event.HasField("session_log") else None))
        data = data[12 + n + 4:]
    return out


def test_strict_json_and_resume_cut(tmp_path):
    writer = MetricWriter(str(tmp_path))
    for step in (1, 2, 3, 4):
        writer.write(step, {"train/loss": np.float32(step if step != 3 else np.nan),
                            "eval/confusion": np.array([[1.0, np.inf], [0.0, 2.0]])})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')          # a row torn by a kill
    rows = [json.loads(line, parse_constant=_refuse) for line in open(tmp_path / "metrics.jsonl")
            if line.endswith("\n")]
    assert rows[2]["train/loss"] is None and rows[2]["nonfinite"] == ["train/loss", "eval/confusion"]
    assert rows[0]["eval/confusion"] == [[1.0, None], [0.0, 2.0]] and rows[1]["train/loss"] == 2.0

    MetricWriter(str(tmp_path), resume_step=2).close()   # a run resumed from step 2
    assert [r["step"] for r in _strict_lines(tmp_path / "metrics.jsonl")] == [1, 2]
    files = sorted(glob.glob(str(tmp_path / "tensorboard" / "events.*")), key=os.path.getmtime)
    assert len(files) == 2 and (3, 1) in _tb_events(files[-1])   # purge from step 3: START at 3

    write_json(str(tmp_path / "final.json"), {"step": 4, "metrics": {"eval/loss": float("nan"), "a": 1.0}})
    final = json.loads(open(tmp_path / "final.json").read(), parse_constant=_refuse)
    assert final["metrics"] == {"eval/loss": None, "a": 1.0} and final["nonfinite"] == ["metrics.eval/loss"]


# ------------------------------------------------------------------ checkpoint fallback
def _break(part: str, how: str) -> None:
    arrays = glob.glob(os.path.join(part, "state", "**", "d", "*"), recursive=True)
    if how == "truncate":   # the smallest: orbax's index may not even reference it, the seal does
        smallest = min(arrays, key=os.path.getsize)
        os.truncate(smallest, os.path.getsize(smallest) // 2)
    elif how == "delete":
        for path in arrays:
            os.remove(path)
    else:   # unreadable metadata
        with open(os.path.join(part, "meta", "metadata"), "w") as f:
            f.write('{"step": 1')


def test_corrupt_checkpoint_falls_back_and_ends_bit_identical(tmp_path, capsys):
    config = tiny_config(steps=12, model="mlp", checkpoint_every=4, keep_checkpoints=3)
    reference = train(config, str(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.remove(tmp_path / "b" / "final.json")
    ckpts = tmp_path / "b" / "checkpoints"
    _break(str(ckpts / "12"), "truncate")
    capsys.readouterr()
    resumed = train(config, str(tmp_path / "b"))
    out = capsys.readouterr().out
    assert "Fell back to checkpoint step 8" in out and "when saved" in out   # the size check
    assert (ckpts / "corrupt-12").is_dir() and sorted(os.listdir(ckpts)) == ["12", "4", "8", "corrupt-12"]
    assert resumed["param_digest"] == reference["param_digest"]
    steps = [r["step"] for r in _strict_lines(tmp_path / "b" / "metrics.jsonl") if "train/loss" in r]
    assert steps == list(range(1, 13))   # rows 9-12 of the first run were cut, then rewritten

    for step, how in ((12, "meta"), (8, "delete"), (4, "truncate")):
        _break(str(ckpts / str(step)), how)
    with pytest.raises(UserError, match="None of the checkpoints"):
        train(config, str(tmp_path / "b"))
    assert sorted(os.listdir(ckpts)) == ["corrupt-12", "corrupt-12-2", "corrupt-4", "corrupt-8"]


# ------------------------------------------------------------------ resume validation
def test_resume_with_other_data_is_refused_unless_restarted(tmp_path):
    workdir = str(tmp_path)
    train(tiny_config(steps=2, model="mlp"), workdir)
    c = tiny_config(steps=4, model="mlp")
    c.data.batch_size = 64
    with pytest.raises(UserError, match=r"batch_size 32 -> 64.*--config.data.batch_size=32.*restart_data=True"):
        train(c, workdir)
    c.seed, c.data.batch_size = 1, 32
    with pytest.raises(UserError, match=r"seed 0 -> 1"):
        train(c, workdir)
    c.seed, c.data.batch_size, c.train.restart_data = 0, 64, True
    train(c, workdir)
    meta = json.load(open(tmp_path / "checkpoints" / "4" / "meta" / "metadata"))
    assert meta["data"]["batch_size"] == 64
    assert meta["data"]["restarts"] == [{"step": 2, "batch_size": {"old": 32, "new": 64}}]


# ------------------------------------------------------------------ SIGKILL during a save
def test_sigkill_during_async_save_resumes_bit_identical(tmp_path):
    reference = faults.run(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    digest = faults.final(tmp_path / "reference")["param_digest"]
    trial = faults.kill_resume_trial(tmp_path / "killed", digest, random.Random(0), kills=1,
                                     during_save=True)
    assert trial["kills"] == 1 and trial["survived"], trial


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", [   # unknown key, dataset and model: tests/test_cli.py
    "wrong_type", "nonpositive_steps", "syntax_error", "get_config_raises", "missing_get_config",
    "unreadable_file", "missing_file", "unknown_task", "nondivisible_batch", "workdir_is_file",
    "workdir_not_writable", "tfds_not_prepared", "disk_full_during_save"])
def test_bad_input_exits_2_with_one_paragraph(tmp_path, name):
    result = faults.bad_input(str(tmp_path), name, *faults.bad_inputs(str(tmp_path))[name])
    assert result["ok"], result


def test_debug_flag_shows_the_traceback(tmp_path):
    extra, expected, _ = faults.bad_inputs(str(tmp_path))["get_config_raises"]
    result = subprocess.run([sys.executable, "-m", "jaxnets.cli", "--debug", "train", *extra,
                             "--workdir", str(tmp_path / "w")], cwd=faults.REPO, env=faults._env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and expected in " ".join(result.stderr.split())
    assert "Traceback" in result.stderr and "KeyError" in result.stderr


# ------------------------------------------------------------------ a busy cluster (issue #23)
def test_launcher_killed_during_a_save_leaves_no_rank_and_relaunch_matches(tmp_path):
    row = cluster.launcher_kill_during_save(str(tmp_path), trials=1)
    assert row["ranks_alive_10s_after"] == 0 and row["digest_mismatch"] == 0
    assert row["survived"] == row["trials"] == 1, row


def test_concurrent_runs_one_refused_in_seconds_the_other_finishes(tmp_path):
    digest = _lone_digest(tmp_path)
    row = cluster.concurrent_runs(str(tmp_path), digest)
    assert row["survived"] == 1 and row["refused_after_s"] < 10, row


def test_permission_error_exits_2_moves_nothing_and_resumes_later(tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("needs util-linux's setpriv")
    row = cluster.permission_error(str(tmp_path), _lone_digest(tmp_path))
    assert row["survived"] == 1 and row["exit"] == 2, json.dumps(row, indent=0)


def test_gs_workdir_on_an_emulator_killed_and_resumed(tmp_path):
    pytest.importorskip("gcp_storage_emulator", reason="pip install -e .[dev] brings it")
    row = cluster.cloud_workdir(str(tmp_path))
    assert row["killed"] and row["digest_mismatch"] == 0, row
    assert row["survived"] == 1, json.dumps(row, indent=0)


def _lone_digest(tmp_path) -> str:
    reference = str(tmp_path / "lone")
    if not os.path.exists(os.path.join(reference, "final.json")):
        assert faults.run(reference).returncode == 0
    return faults.final(reference)["param_digest"]

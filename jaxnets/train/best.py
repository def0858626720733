"""Best checkpoint and early stopping: the trainer's memory of its best evaluation.

    --config.train.best_metric=eval/loss --config.train.best_mode=min
    --config.train.early_stopping_patience=3      # evaluations without improvement; 0 = never stop

After every evaluation `BestKeeper.observe` compares `best_metric` with the best value so far;
an improvement saves the whole training state to `WORKDIR/best/<step>/` (orbax, one kept)
beside the latest checkpoints in `WORKDIR/checkpoints/`. Its bookkeeping (metric, value, step,
evaluations since the best) lives in `WORKDIR/best/best.json`, written after the checkpoint, so
a resumed run keeps the best so far, and a run that stopped early stays stopped on resume.
`restore_best(trainer)` loads the best state into a Trainer for reports and research code.
"""
from __future__ import annotations

import json
import math

import jax
import orbax.checkpoint as ocp
from flax import nnx

from jaxnets import storage
from jaxnets.errors import UserError
from jaxnets.train import checkpoint as ckpt

BEST_DIR = "best"


def _load_json(path: str) -> dict | None:
    if not storage.exists(path):
        return None
    return json.loads(storage.read_text(path))


class BestKeeper:
    """Tracks `train.best_metric`; saves the best state; says when patience has run out."""

    def __init__(self, config, workdir: str, write_json: bool = True):
        t = config.train
        self.metric = t.get("best_metric", "") or ""
        self.mode = t.get("best_mode", "min")
        self.patience = int(t.get("early_stopping_patience", 0) or 0)
        if self.mode not in ("min", "max"):
            raise UserError(f"train.best_mode must be 'min' or 'max', got {self.mode!r}.")
        if self.patience and not self.metric:
            raise UserError("train.early_stopping_patience needs train.best_metric (e.g. "
                            "--config.train.best_metric=eval/loss) to know what 'improved' means.")
        if self.metric and not config.data.eval_split:
            raise UserError(f"train.best_metric={self.metric!r} needs evaluations, but "
                            "data.eval_split is empty.")
        self.enabled = bool(self.metric)
        self.directory = storage.join(workdir, BEST_DIR)
        self.write_json = write_json
        self.value, self.step, self.since_best, self.last_eval = None, None, 0, -1
        self.manager = None
        if self.enabled:
            # Same orbax layout as the latest checkpoints (state + meta), one step kept.
            self.manager = ocp.CheckpointManager(
                self.directory, item_names=("state", "meta"),
                options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                     enable_async_checkpointing=False))
            saved = _load_json(storage.join(self.directory, "best.json"))
            if saved and saved.get("metric") == self.metric and saved.get("mode") == self.mode:
                self.value, self.step = saved["value"], saved["step"]
                self.since_best = saved.get("evals_since_best", 0)
                self.last_eval = saved.get("last_eval_step", -1)

    @property
    def stopped(self) -> bool:
        return bool(self.patience) and self.since_best >= self.patience

    def improves(self, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False   # a NaN evaluation is never "best"
        if self.value is None:
            return True
        return value < self.value if self.mode == "min" else value > self.value

    def observe(self, step: int, eval_metrics: dict, pure_state_fn, meta_fn) -> bool:
        """Record one evaluation; True when the run should stop (patience exhausted)."""
        if not self.enabled:
            return False
        if self.metric not in eval_metrics:
            raise UserError(f"train.best_metric={self.metric!r} is not among the evaluation's "
                            f"metrics: {sorted(k for k in eval_metrics)}.")
        value = float(eval_metrics[self.metric])
        if step <= self.last_eval:
            return self.stopped   # resumed behind the last evaluation: already counted
        self.last_eval = step
        if self.improves(value):
            self.value, self.step, self.since_best = value, step, 0
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(ckpt.to_saveable(pure_state_fn())),
                meta=ocp.args.JsonSave(meta_fn(step))), force=True)
            self.manager.wait_until_finished()
        else:
            self.since_best += 1
        self._write_json()
        return self.stopped

    def _write_json(self) -> None:
        if self.write_json:
            ckpt.write_json(storage.join(self.directory, "best.json"), {
                "metric": self.metric, "mode": self.mode, "value": self.value, "step": self.step,
                "evals_since_best": self.since_best, "last_eval_step": self.last_eval,
                "patience": self.patience,
                "stopped": self.stopped})

    def summary(self) -> dict:
        """The keys final.json gains: best_step, best_metric, best_value, early_stopped."""
        if not self.enabled:
            return {}
        return {"best_step": self.step, "best_metric": self.metric, "best_value": self.value,
                "early_stopped": self.stopped}

    def close(self) -> None:
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()


def restore_best(trainer) -> int:
    """Load WORKDIR/best's state into `trainer` (a `jaxnets.train.Trainer`); returns its step."""
    directory = storage.join(trainer.workdir, BEST_DIR)
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"))
    try:
        step = manager.latest_step()
        if step is None:
            raise UserError(f"No best checkpoint in {directory}: train with --config.train.best_metric.")
        pure = nnx.to_pure_dict(trainer.state)
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("signature") != ckpt.signature(pure):
            raise UserError(f"{directory}/{step} holds a different model than this config builds.")
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              ckpt.to_saveable(pure))
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"]
        nnx.replace_by_pure_dict(trainer.state, ckpt.from_saveable(restored, pure))
        return step
    finally:
        manager.close()

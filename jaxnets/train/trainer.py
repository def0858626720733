"""The one trainer: mesh -> task state -> shardings -> jitted steps -> loop -> checkpoints -> final.json.

Every paradigm (classifier, language model, seq2seq, VAE, GAN, diffusion) runs through
`Trainer`; a model family plugs in as a task (`jaxnets/tasks/base.py`). Following Flax's
performance guide, the NNX object graph is split once; the hot loop calls a `jax.jit`-ed
pure function of (state, batch, step) with explicit in/out shardings and the state donated.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnets.data import load_dataset
from jaxnets.data.pipeline import TrainIterator, eval_batches, prefetch
from jaxnets.errors import UserError
from jaxnets.parallel import mesh as meshlib
from jaxnets import runtime
from jaxnets.runtime import tune_host_allocator
from jaxnets.tasks import TASKS
from jaxnets.train import checkpoint as ckpt
from jaxnets.train.logging import MetricWriter, Progress, log_line
from jaxnets.train.optim import OptimizerFactory


def check_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"Cannot write to workdir {workdir!r} ({e.strerror or e}). Choose a "
                        "directory you can create and write, e.g. --workdir runs/NAME.") from None


class Trainer:
    """Builds everything from a config; `run()` trains, evaluates, checkpoints and reports."""

    def __init__(self, config, workdir: str):
        self.config, self.workdir = config, workdir
        check_workdir(workdir)
        tune_host_allocator()   # reuse freed pages instead of faulting in each step's buffers
        runtime.enable_compilation_cache()   # a repeated run loads its compiled programs
        meshlib.maybe_initialize_distributed()
        self.is_main = jax.process_index() == 0
        self.mesh = meshlib.make_mesh(dict(config.mesh), config.mesh_devices)
        dp = meshlib.data_parallel_size(self.mesh)
        for key in ("batch_size", "eval_batch_size"):
            if config.data[key] % dp:
                raise UserError(
                    f"data.{key}={config.data[key]} is not divisible by the {dp} data-parallel "
                    f"devices of mesh {dict(self.mesh.shape)}: every device must get an equal "
                    f"share. Use a multiple of {dp} (e.g. --config.data.{key}="
                    f"{max(dp, config.data[key] // dp * dp)}) or fewer devices (--config.mesh_devices=N).")

        self.dataset = load_dataset(config.data.name, **config.data.options)
        for split in (config.data.train_split, config.data.eval_split):
            if split and split not in self.dataset.splits:
                raise UserError(f"Dataset {config.data.name!r} has no split {split!r}; it has "
                                f"{sorted(self.dataset.splits)}.")
        self.task = TASKS.get(config.task)(config, self.dataset)
        self.optimizers = OptimizerFactory(config)
        self._build_state()
        self._compile_steps()

    # ---------------------------------------------------------------- state and shardings
    def _build_state(self) -> None:
        build = lambda: self.task.build(nnx.Rngs(self.config.seed), self.optimizers)
        with jax.set_mesh(self.mesh):
            abstract = nnx.eval_shape(build)
        self.graphdef, abstract_state = nnx.split(abstract)
        self.state_sharding = meshlib.state_shardings(self.mesh, abstract_state, self.config.sharding_rules)
        with jax.set_mesh(self.mesh):
            # Initialise directly into the target shardings: no host copy of the parameters.
            self.state = jax.jit(lambda: nnx.split(build())[1], out_shardings=self.state_sharding)()
        self.batch_sharding = meshlib.batch_sharding(self.mesh)
        self.replicated = meshlib.replicated(self.mesh)

    def module(self) -> nnx.Module:
        """The current state as an NNX object (for reports, research code and tests)."""
        return nnx.merge(self.graphdef, self.state)

    def _compile_steps(self) -> None:
        graphdef, task, seed = self.graphdef, self.task, self.config.seed

        def train_step(state, batch, step):
            module = nnx.merge(graphdef, state)
            rng = jax.random.fold_in(jax.random.key(seed), step)
            metrics = task.train_step(module, batch, rng)
            return nnx.split(module)[1], metrics

        def eval_step(state, batch):
            return task.eval_step(nnx.merge(graphdef, state), batch)

        self.jit_train_step = jax.jit(
            train_step, in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
            out_shardings=(self.state_sharding, self.replicated), donate_argnums=0)
        self.jit_eval_step = jax.jit(
            eval_step, in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=self.replicated)

    # ---------------------------------------------------------------- steps
    def put_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return meshlib.global_batch(local, self.batch_sharding)

    def step(self, batch: dict[str, np.ndarray], step: int) -> dict[str, jax.Array]:
        self.state, metrics = self.jit_train_step(self.state, self.put_batch(batch), np.int32(step))
        return metrics

    def evaluate(self, split: str | None = None) -> dict[str, Any]:
        split = split or self.config.data.eval_split
        totals = None
        for batch in eval_batches(self.dataset.splits[split], self.config.data.eval_batch_size,
                                  process_index=jax.process_index(), process_count=jax.process_count()):
            sums = self.jit_eval_step(self.state, self.put_batch(batch))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        return self.task.summarize(jax.device_get(totals))

    def param_digest(self) -> str:
        params = nnx.state(self.module(), nnx.Param).to_pure_dict()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            params = multihost_utils.process_allgather(params, tiled=True)
        return ckpt.param_digest(params)

    # ---------------------------------------------------------------- checkpoints
    def _meta(self, step: int) -> dict:
        pure = self.state.to_pure_dict()
        return {"step": step, "seed": self.config.seed, "signature": ckpt.signature(pure),
                "layout": ckpt.describe(pure),
                "data": {"step": step, "seed": self.config.seed,
                         "batch_size": self.config.data.batch_size,
                         "size": self.dataset.size(self.config.data.train_split)},
                "config": self.config.to_json_best_effort()}

    def restore_latest(self, checkpointer: ckpt.Checkpointer) -> int:
        step = checkpointer.latest_step()
        if step is None:
            return 0
        pure = self.state.to_pure_dict()
        restored, meta = checkpointer.restore(step, pure, ckpt.signature(pure))
        nnx.replace_by_pure_dict(self.state, restored)
        print(f"Resumed from {checkpointer.directory}/{step}", flush=True)
        return int(meta["data"]["step"])

    # ---------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        c = self.config
        total = c.train.steps
        checkpointer = ckpt.Checkpointer(self.workdir, c.train.keep_checkpoints)
        start = self.restore_latest(checkpointer)
        writer = MetricWriter(self.workdir, enabled=self.is_main)
        data = TrainIterator(self.dataset.splits[c.data.train_split], c.data.batch_size, c.seed,
                             process_index=jax.process_index(), process_count=jax.process_count(),
                             start_step=start)
        batches = prefetch(data, c.data.prefetch)
        stop = {"signal": None}
        previous = signal.signal(signal.SIGTERM, lambda sig, frame: stop.update(signal=sig))
        progress = Progress(total, start, enabled=c.train.progress and self.is_main)
        per_batch = self.task.throughput(self.module())
        peak = peak_flops_per_device()
        pending, t0, t_start, step = [], time.time(), time.time(), start
        timing: dict[str, float] = {}
        eval_metrics: dict[str, Any] = {}
        logged: dict[str, float] = {}   # last train log; eval may come before the first one
        try:
            while step < total:
                if stop["signal"] is not None:
                    if checkpointer.latest_step() != step:
                        checkpointer.save(step, self.state.to_pure_dict(), self._meta(step), force=True)
                    checkpointer.wait()
                    print(f"SIGTERM: saved checkpoint at step {step} in {checkpointer.directory}; "
                          "run the same command again to resume.", flush=True)
                    return {"step": step, "preempted": True}
                pending.append(self.step(next(batches), step))
                step += 1
                if step == start + 1:   # the first step, compiled: timed apart from the others
                    jax.block_until_ready(pending[-1])
                    first_done = time.time()
                    timing = {"time_to_first_step_s": first_done - runtime.PROCESS_START, "steps_s": 0.0}
                progress.update(step)
                if step % c.train.log_every == 0 or step == total:
                    logged = self._mean(pending)
                    dt = time.time() - t0
                    logged["train/steps_per_sec"] = len(pending) / dt
                    timing["steps_s"] += time.time() - max(t0, first_done)
                    logged["train/examples_per_sec"] = len(pending) * c.data.batch_size / dt
                    if "tokens" in per_batch:
                        logged["train/tokens_per_sec"] = len(pending) * per_batch["tokens"] / dt
                    if "flops" in per_batch:
                        per_device = len(pending) * per_batch["flops"] / dt / self.mesh.size
                        logged["train/tflops_per_sec_per_device"] = per_device / 1e12
                        if peak:
                            logged["train/mfu"] = per_device / peak
                    for section, schedule in self.optimizers.schedules.items():
                        logged[f"train/lr_{section}" if section != "optim" else "train/lr"] = float(
                            schedule(step // max(1, c[section].accumulate_steps)))
                    writer.write(step, logged)
                    progress.update(step, {k.split("/")[-1]: v for k, v in logged.items()
                                           if k in ("train/loss", "train/steps_per_sec")})
                    pending, t0 = [], time.time()
                if c.data.eval_split and (step % c.train.eval_every == 0 or step == total):
                    eval_metrics = {f"eval/{k}": v for k, v in self.evaluate().items()}
                    writer.write(step, eval_metrics)
                    if progress.bar is None and self.is_main:
                        train_loss = {k: v for k, v in logged.items() if k == "train/loss"}
                        log_line(step, total, {**eval_metrics, **train_loss}, t_start)
                    t0 = time.time()
                if step % c.train.checkpoint_every == 0 or step == total:
                    checkpointer.save(step, self.state.to_pure_dict(), self._meta(step), force=step == total)
            checkpointer.wait()
            if not eval_metrics and c.data.eval_split:
                eval_metrics = {f"eval/{k}": v for k, v in self.evaluate().items()}
            if c.train.report and self.is_main:
                report = self.task.report(self.module(), self.workdir) or {}
                eval_metrics.update(report)
                writer.write(step, {k: v for k, v in report.items()
                                    if np.ndim(v) == 0 and not isinstance(v, str)})
            final = {"step": step, "metrics": _jsonable(eval_metrics), "param_digest": self.param_digest()}
            # Where a run's time goes: start-up to the first step done (imports, data, init,
            # compile), all compilation in the process, and the steps after the first.
            final.update({**timing, "compile_s": runtime.compile_seconds()} if step > start else {})
            if self.is_main:
                ckpt.write_json(os.path.join(self.workdir, "final.json"), final)
            return final
        finally:
            signal.signal(signal.SIGTERM, previous)
            progress.close()
            writer.close()
            checkpointer.close()

    @staticmethod
    def _mean(pending: list[dict]) -> dict[str, float]:
        values = jax.device_get(pending)
        return {f"train/{k}": float(np.mean([v[k] for v in values])) for k in values[0]}


# Dense bf16 peak FLOP/s per chip, for model FLOP utilisation (train/mfu).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6e": 918e12}


def peak_flops_per_device() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)


def _jsonable(metrics: dict) -> dict:
    return {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) if isinstance(v, (int, float, np.ndarray, np.generic, jax.Array)) else v
            for k, v in metrics.items()}


def train(config, workdir: str) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming if it holds a checkpoint); returns final.json's content."""
    return Trainer(config, workdir).run()

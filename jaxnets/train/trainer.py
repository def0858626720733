"""The one trainer: mesh -> task state -> shardings -> jitted steps -> loop -> checkpoints -> final.json.

Every paradigm (classifier, language model, seq2seq, VAE, GAN, diffusion) runs through
`Trainer`; a model family plugs in as a task (`jaxnets/tasks/base.py`). Following Flax's
performance guide, the NNX object graph is split once; the hot loop calls a `jax.jit`-ed
pure function of (state, batch, step) with explicit in/out shardings and the state donated.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from jaxnets import storage
from jaxnets.config import validate_config
from jaxnets.data import load_dataset
from jaxnets.data.pipeline import TrainIterator, eval_batches, read_records
from jaxnets.data.source import as_source
from jaxnets.data.memory import host_rss_peak_kib
from jaxnets.errors import UserError
from jaxnets.evaluators import EvalContext, build_evaluators
from jaxnets.parallel import chips
from jaxnets.parallel import mesh as meshlib
from jaxnets.parallel import sharding
from jaxnets.parallel.sharding import axis_rules
from jaxnets.platform import compile_cache
from jaxnets.platform.collective_launch import serial_collective_launches
from jaxnets.platform.lowering_rule import building_for
from jaxnets.tasks import TASKS
from jaxnets.train import checkpoint as ckpt
from jaxnets.train import guard, resume, workdir_lock
from jaxnets.train.best import BestKeeper
from jaxnets.train.metric_log import MetricWriter, Progress, log_line
from jaxnets.train.optim import OptimizerFactory
from jaxnets.train.preemption import PreemptionWatch
from jaxnets.train.profiling import StepProfiler


def check_workdir(workdir: str) -> None:
    try:
        storage.makedirs(workdir)   # a local folder, or a gs:// / s3:// prefix
        probe = storage.join(workdir, f".write_test.{os.getpid()}")
        storage.write_text(probe, "ok")
        storage.remove(probe)
    except OSError as e:
        raise UserError(f"Cannot write to workdir {workdir!r} ({e.strerror or e}). Choose a "
                        "directory you can create and write, e.g. --workdir runs/NAME.") from None


class Trainer:
    """Builds everything from a config; `run()` trains, evaluates, checkpoints and reports."""

    def __init__(self, config, workdir: str | None, *, layout_only: bool = False,
                 read_only: bool = False, devices: list | None = None):
        """`layout_only`: build the abstract state, its shardings and the jitted steps, and
        allocate nothing (for `--print_layout` and `jaxnets compile`, which lowers the very
        step `run()` would call); no workdir is needed. `read_only`: for the commands on a
        trained workdir: no lock is taken, nothing under checkpoints/ is created, renamed or
        saved. `devices`: what the mesh spans (default `jax.devices()`); `jaxnets compile`
        passes a target topology's abstract devices."""
        self.config, self.workdir, self.read_only = config, workdir, read_only
        validate_config(config)
        if not layout_only and not read_only:
            check_workdir(workdir)
        # A target topology's devices belong to no job this process could join.
        self.joined = meshlib.maybe_initialize_distributed() if devices is None else "abstract"
        self.is_main = jax.process_index() == 0
        # One writer per workdir, taken before any real work so a second run stops in seconds.
        self.lock = None if layout_only or read_only else workdir_lock.lock_for_job(workdir)
        try:
            self._setup(config, layout_only, devices)
        except BaseException:
            self.release_lock()
            raise

    def release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _setup(self, config, layout_only: bool, devices) -> None:
        self.mesh = meshlib.make_mesh(dict(config.mesh), config.mesh_devices, devices=devices)
        self.rules = tuple(config.sharding_rules)
        meshlib.check_input_feed(self.mesh, self.rules)   # every process reads its own share
        dp = sharding.data_parallel_size(self.mesh, self.rules)
        for key in ("batch_size", "eval_batch_size"):
            if config.data[key] % dp:
                raise UserError(
                    f"data.{key}={config.data[key]} is not divisible by the {dp} data-parallel "
                    f"devices of mesh {dict(self.mesh.shape)}: every device must get an equal "
                    f"share. Use a multiple of {dp} (e.g. --config.data.{key}="
                    f"{max(dp, config.data[key] // dp * dp)}) or fewer devices (--config.mesh_devices=N).")
        if self.is_main and not layout_only:
            print(f"jaxnets: {jax.process_count()} process(es) ({self.joined}), {jax.device_count()} "
                  f"{jax.default_backend()} devices ({jax.local_device_count()} local), mesh "
                  f"{dict(self.mesh.shape)}", flush=True)
            if jax.default_backend() == "cpu" and str(config.train.get("compute_dtype")) == "bfloat16":
                # XLA:CPU computes bf16 products in float32 with conversions around them
                print("jaxnets: train.compute_dtype=bfloat16 on CPU runs slower than float32 here "
                      "(XLA:CPU upcasts bf16 products; docs/cpu_choices.md)", flush=True)

        self.dataset = load_dataset(config.data.name, **config.data.options)
        for split in (config.data.train_split, config.data.eval_split):
            if split and split not in self.dataset.splits:
                raise UserError(f"Dataset {config.data.name!r} has no split {split!r}; it has "
                                f"{sorted(self.dataset.splits)}.")
        self.task = TASKS.get(config.task)(config, self.dataset)
        self.evaluators = [] if layout_only else build_evaluators(config, self.task, self.dataset)
        self.optimizers = OptimizerFactory(config)
        self._build_state(allocate=not layout_only)
        self._compile_steps()   # jax.jit objects only: nothing is traced or compiled yet

    # ---------------------------------------------------------------- state and shardings
    def _build_state(self, allocate: bool = True) -> None:
        build = lambda: self.task.build(nnx.Rngs(self.config.seed), self.optimizers)
        # Logical names are resolved by our rules (with divisibility fallbacks, in
        # sharding.state_layout), never by flax's eager sharding. The layer choices
        # (`lowering_for`) are those of the mesh's platform.
        with nnx.use_eager_sharding(False), building_for(self.mesh.devices.flat[0].platform):
            abstract = nnx.eval_shape(build)
        self.graphdef, abstract_state = nnx.split(abstract)
        self.abstract_state = abstract_state
        self.layout = sharding.state_layout(self.mesh, abstract_state, self.rules)
        self.state_sharding = sharding.state_shardings(self.mesh, abstract_state, self.rules)
        self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
        self.replicated = sharding.replicated(self.mesh)
        if not allocate:
            return
        with nnx.use_eager_sharding(False), building_for(self.mesh.devices.flat[0].platform):
            # Initialise directly into the target shardings: no host copy of the parameters.
            self.state = jax.jit(lambda: nnx.split(build())[1], out_shardings=self.state_sharding)()

    def abstract_step_args(self) -> tuple:
        """(state, batch, step) of one train step as `jax.ShapeDtypeStruct`s carrying the
        shardings the step takes: `jit_train_step.lower(*these)` needs no allocated array."""
        state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                             self.abstract_state, self.state_sharding)
        # One record read and transformed as training reads it: the batch's fields and shapes.
        source = as_source(self.dataset.splits[self.config.data.train_split])
        one = read_records(source, np.zeros(1, np.int64), self.dataset.train_transform, [[0, 0]])
        batch = {key: jax.ShapeDtypeStruct((self.config.data.batch_size,) + np.shape(v)[1:],
                                           np.asarray(v).dtype, sharding=self.batch_sharding)
                 for key, v in one.items()}
        step = jax.ShapeDtypeStruct((), jnp.int32, sharding=self.replicated)
        return state, batch, step

    def layout_table(self) -> str:
        return sharding.format_layout(self.mesh, self.layout)

    def module(self) -> nnx.Module:
        """The current state as an NNX object (for reports, research code and tests)."""
        return nnx.merge(self.graphdef, self.state)

    def _compile_steps(self) -> None:
        graphdef, task, seed = self.graphdef, self.task, self.config.seed
        mesh, rules = self.mesh, self.rules

        def train_step(state, batch, step):
            with axis_rules(mesh, rules):   # activation constraints, kernels under shard_map
                module = nnx.merge(graphdef, state)
                rng = jax.random.fold_in(jax.random.key(seed), step)
                metrics = task.train_step(module, batch, rng)
                return nnx.split(module)[1], metrics

        train_step = guard.guarded(train_step)   # a non-finite step leaves the state as it was

        def eval_step(state, batch):
            with axis_rules(mesh, rules):
                return task.eval_step(nnx.merge(graphdef, state), batch)

        self.serial_collectives = serial_collective_launches()   # a step ends before the next starts
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
        if self.serial_collectives:
            jax.block_until_ready(metrics)
        return metrics

    def evaluate(self, split: str | None = None) -> dict[str, Any]:
        split = split or self.config.data.eval_split
        totals = None
        for batch in eval_batches(self.dataset.splits[split], self.config.data.eval_batch_size,
                                  process_index=jax.process_index(), process_count=jax.process_count(),
                                  transform=self.dataset.eval_transform,
                                  workers=self.config.data.get("workers", 0),
                                  prefetch=self.config.data.prefetch):
            sums = self.jit_eval_step(self.state, self.put_batch(batch))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
            if self.serial_collectives:
                jax.block_until_ready(totals)
        return self.task.summarize(jax.device_get(totals))

    def param_digest(self) -> str:
        """final.json's digest of the parameters, reduced where they live (every process calls
        it; nothing is gathered): equal for equal parameters on any mesh or process count."""
        return ckpt.param_digest(nnx.to_pure_dict(nnx.state(self.module(), nnx.Param)))

    # ---------------------------------------------------------------- checkpoints
    def _meta(self, step: int) -> dict:
        pure = nnx.to_pure_dict(self.state)
        return {"step": step, "seed": self.config.seed, "signature": ckpt.signature(pure),
                "layout": ckpt.describe(pure),
                "data": {"step": step, **resume.data_description(
                    self.config, self.dataset.size(self.config.data.train_split),
                    getattr(self, "data_restarts", []))},
                "config": self.config.to_json_best_effort()}

    def restore_latest(self, checkpointer: ckpt.Checkpointer) -> int:
        """Restore the newest readable checkpoint (older ones if newer are corrupt); 0 if none."""
        pure = nnx.to_pure_dict(self.state)
        found = resume.restore_newest_good(
            checkpointer, pure, ckpt.signature(pure), log=lambda m: print(m, flush=True),
            read_only=self.read_only,
            accept_lost=bool(self.config.train.get("accept_lost_checkpoints", False)))
        if found is None:
            return 0
        step, restored, meta = found
        current = resume.data_description(self.config, self.dataset.size(self.config.data.train_split))
        self.data_restarts = resume.check_data(meta["data"], current, int(meta["data"]["step"]),
                                               self.config.train.get("restart_data", False))
        nnx.replace_by_pure_dict(self.state, restored)
        print(f"Resumed from {checkpointer.directory}/{step}", flush=True)
        return int(meta["data"]["step"])

    # ---------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            self.release_lock()   # held since __init__; also when resuming is refused

    def _run(self) -> dict[str, Any]:
        c = self.config
        total = c.train.steps
        checkpointer = ckpt.Checkpointer(self.workdir, c.train.keep_checkpoints)
        start = self.restore_latest(checkpointer)
        best = BestKeeper(c, self.workdir, write_json=self.is_main)   # train.best_metric, early stopping
        writer = MetricWriter(self.workdir, enabled=self.is_main, resume_step=start)
        monitor = guard.NonFiniteMonitor(c.train.get("max_nonfinite_steps", 5))
        data = TrainIterator(self.dataset.splits[c.data.train_split], c.data.batch_size, c.seed,
                             process_index=jax.process_index(), process_count=jax.process_count(),
                             start_step=start, transform=self.dataset.train_transform,
                             workers=c.data.get("workers", 0), prefetch=c.data.prefetch,
                             stop_step=total)
        batches = data
        preempted = PreemptionWatch()
        delay = float(os.environ.get("JAXNETS_FAULT_STEP_DELAY_S", "0"))   # fault tests: a slow host
        progress = Progress(total, start, enabled=c.train.progress and self.is_main)
        profiler = StepProfiler(c.train.get("profile_steps", ()), self.workdir, self.is_main)
        per_batch = self.task.throughput(self.module())
        peak = peak_flops_per_device()
        pending, t0, t_start, step = [], time.time(), time.time(), start
        timing: dict[str, float] = {}
        eval_metrics: dict[str, Any] = {}
        logged: dict[str, float] = {}   # last train log; eval may come before the first one
        try:
            while step < total and not best.stopped:
                if preempted(step):
                    if checkpointer.latest_step() != step:
                        checkpointer.save(step, nnx.to_pure_dict(self.state), self._meta(step), force=True)
                    checkpointer.wait()
                    print(f"Stop requested (SIGTERM/SIGINT): saved checkpoint at step {step} in {checkpointer.directory}"
                          f"{' (all processes agreed on this step)' if preempted.distributed else ''}; "
                          "run the same command again to resume.", flush=True)
                    return {"step": step, "preempted": True}
                if delay:
                    time.sleep(delay)
                profiler.at(step, self.state)
                pending.append(self.step(next(batches), step))
                step += 1
                if step == start + 1:   # the first step, compiled: timed apart from the others
                    jax.block_until_ready(pending[-1])
                    first_done = time.time()
                    timing = {"time_to_first_step_s": first_done - compile_cache.PROCESS_START, "steps_s": 0.0}
                progress.update(step)
                if step % c.train.log_every == 0 or step == total:
                    logged = self._mean(pending)
                    monitor.observe(step - len(pending) + 1, jax.device_get(pending))
                    monitor.summarize(logged)
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
                    if monitor.diverged and checkpointer.latest_step() != step:
                        # The skipped updates changed nothing: this is the last finite state.
                        checkpointer.save(step, nnx.to_pure_dict(self.state), self._meta(step), force=True)
                    monitor.raise_if_diverged()   # exit 3
                    progress.update(step, {k.split("/")[-1]: v for k, v in logged.items()
                                           if k in ("train/loss", "train/steps_per_sec")})
                    pending, t0 = [], time.time()
                if c.data.eval_split and (step % c.train.eval_every == 0 or step == total):
                    eval_metrics = {f"eval/{k}": v for k, v in self.evaluate().items()}
                    writer.write(step, eval_metrics)
                    if progress.bar is None and self.is_main:
                        train_loss = {k: v for k, v in logged.items() if k == "train/loss"}
                        log_line(step, total, {**eval_metrics, **train_loss}, t_start)
                    best.observe(step, eval_metrics, lambda: nnx.to_pure_dict(self.state), self._meta)
                    t0 = time.time()
                due = [e for e in self.evaluators if e.due(step) and step < total]
                if due:
                    evaluated = self.run_evaluators(step, due)
                    writer.write(step, _scalars(evaluated))
                    eval_metrics.update(evaluated)
                    t0 = time.time()
                if step % c.train.checkpoint_every == 0 or step == total or best.stopped:
                    checkpointer.save(step, nnx.to_pure_dict(self.state), self._meta(step),
                                      force=step == total or best.stopped)
            checkpointer.wait()
            data.close()   # worker processes end here: their peak memory is then measurable
            if not eval_metrics and c.data.eval_split:
                eval_metrics = {f"eval/{k}": v for k, v in self.evaluate().items()}
            if self.evaluators:   # every evaluator once at the end, on every process
                evaluated = self.run_evaluators(step, self.evaluators)
                writer.write(step, _scalars(evaluated))
                eval_metrics.update(evaluated)
            if c.train.report:
                report = self.report()
                eval_metrics.update(report)
                writer.write(step, {k: v for k, v in report.items()
                                    if np.ndim(v) == 0 and not isinstance(v, str)})
            final = {"step": step, "metrics": _jsonable(eval_metrics), "param_digest": self.param_digest(),
                     "parallel": self.parallel_summary(), **best.summary(),
                     **self.data_summary(data)}
            # Where a run's time goes: start-up to the first step done (imports, data, init,
            # compile), all compilation in the process, and the steps after the first.
            final.update({**timing, "compile_s": compile_cache.compile_seconds()} if step > start else {})
            if self.is_main:
                ckpt.write_json(storage.join(self.workdir, "final.json"), final)
            return final
        finally:
            data.close()
            preempted.close()
            profiler.close()
            progress.close()
            writer.close()
            checkpointer.close()
            best.close()

    def report(self) -> dict[str, Any]:
        """`task.report` (sampling, decoding, judges, plots) on every process, on the sharded state.

        Nothing is gathered: the report's programs run on the state where it lives, as one SPMD
        program over all processes (so every process must run them). Process 0 writes into the
        workdir; the others write the same files into a scratch folder that is then deleted,
        and return nothing (logs and final.json come from process 0).
        """
        if jax.process_count() == 1:
            return self.task.report(self.module(), self.workdir) or {}
        with tempfile.TemporaryDirectory(prefix="jaxnets-report-") as scratch:
            report = self.task.report(self.module(), self.workdir if self.is_main else scratch) or {}
            multihost_utils.sync_global_devices("jaxnets report")
        return report if self.is_main else {}

    def run_evaluators(self, step: int, evaluators) -> dict[str, Any]:
        """The evaluators' metrics at `step`, on the sharded state; every process runs them."""
        context = EvalContext(self.mesh, self.rules, step, self.workdir)
        metrics: dict[str, Any] = {}
        with contextlib.redirect_stdout(sys.stdout if self.is_main else io.StringIO()):
            for evaluator in evaluators:
                metrics.update(evaluator(self.module(), context))
        return metrics

    def data_summary(self, data: TrainIterator) -> dict[str, Any]:
        """final.json's "data" (records each process read, decoding workers, source kind) and
        "host_rss_peak_bytes": the peak resident memory of the largest process, its finished
        decoding workers included (every process joins this gather)."""
        # int32 (JAX's default integer): memory in KiB fits, bytes would not.
        mine = np.array([data.examples_read, host_rss_peak_kib()], np.int32)
        if jax.process_count() > 1:
            every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 2)
        else:
            every = mine[None]
        return {"data": {"examples_read": [int(x) for x in every[:, 0]],
                         "workers": int(self.config.data.get("workers", 0)),
                         "source": self.dataset.source_kind(self.config.data.train_split)},
                "host_rss_peak_bytes": int(every[:, 1].max()) * 1024}

    def parallel_summary(self) -> dict[str, Any]:
        """final.json's "parallel": the mesh and where the state's bytes live (from the arrays)."""
        total, per_device = meshlib.state_bytes(self.state)
        return {"mesh": {k: int(v) for k, v in self.mesh.shape.items()},
                "processes": jax.process_count(), "devices": int(self.mesh.size),
                "state_bytes": total, "state_bytes_per_device": per_device}

    @staticmethod
    def _mean(pending: list[dict]) -> dict[str, float]:
        values = jax.device_get(pending)
        return {f"train/{k}": float(np.mean([v[k] for v in values])) for k in values[0]}


# Dense bf16 peak FLOP/s per chip, for model FLOP utilisation (train/mfu).
def peak_flops_per_device() -> float | None:
    """Dense bf16 peak FLOP/s of this process's device (jaxnets.parallel.chips), for train/mfu."""
    return chips.peak_flops(jax.devices()[0].device_kind)


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if np.ndim(v) == 0 and not isinstance(v, str)}


def _jsonable(metrics: dict) -> dict:
    return {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) if isinstance(v, (int, float, np.ndarray, np.generic, jax.Array)) else v
            for k, v in metrics.items()}


def train(config, workdir: str) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming if it holds a checkpoint); returns final.json's content."""
    return Trainer(config, workdir).run()

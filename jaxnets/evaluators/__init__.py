"""Evaluators: metrics that need more than the task's eval step (another model, sampling).

The trainer builds the evaluators named in `config.evals` (name -> {"kind": ..., "every": N,
options...}) and runs them on every process, on the sharded training state: every `every`
steps (0: only at the end) and once at the end of the run. Their metrics go to metrics.jsonl,
TensorBoard and final.json like the eval metrics.

    c.evals = {"judge": {"kind": "image_judge", "every": 0, "judge_dir": "runs/mnist_judge"}}
    --config.evals.judge.every=500         # also during training
    --config.evals.judge.judge_dir=None    # off

An evaluator that needs a trained model of its own says so through `prerequisite_runs`
(config, workdir pairs); `jaxnets train` trains any that are not finished yet before the job,
on all processes together. No module below the CLI builds a Trainer.

Adding one: a class with `__init__(self, name, options, task, dataset)`, `enabled`,
`prerequisites()`, `__call__(state, context) -> {metric: value}`, registered below.
"""
from __future__ import annotations

from jaxnets.evaluators.evaluator import EvalContext, Evaluator
from jaxnets.registry import Registry
from jaxnets import storage

EVALUATORS = Registry("evaluator", {
    "image_judge": "jaxnets.evaluators.image_judge:ImageJudgeEvaluator",
})

__all__ = ["EVALUATORS", "EvalContext", "Evaluator", "build_evaluators", "pending_runs",
           "prerequisite_runs"]


def _specs(config) -> list[tuple[str, dict]]:
    evals = config.get("evals") or {}
    return [(name, dict(spec)) for name, spec in sorted(dict(evals).items())]


def build_evaluators(config, task, dataset) -> list[Evaluator]:
    """The enabled evaluators of `config.evals`, in name order."""
    built = []
    for name, spec in _specs(config):
        kind = spec.pop("kind", name)
        evaluator = EVALUATORS.get(kind)(name, spec, task, dataset)
        if evaluator.enabled:
            built.append(evaluator)
    return built


def prerequisite_runs(config) -> list[tuple[object, str]]:
    """(config, workdir) of every model the configured evaluators need trained first."""
    runs = []
    for name, spec in _specs(config):
        kind = spec.pop("kind", name)
        runs += EVALUATORS.get(kind).prerequisites(spec)
    return runs


def pending_runs(config) -> list[tuple[object, str]]:
    """The prerequisite runs not finished yet (no final.json in their workdir)."""
    return [(c, w) for c, w in prerequisite_runs(config)
            if not storage.exists(storage.join(w, "final.json"))]

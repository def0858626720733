"""Optimizers from config: schedule, weight decay, global-norm clipping, accumulation.

Tasks never build optax chains themselves; they call `make_optimizer(model, section)` and
get an `nnx.Optimizer` built from `config[section]` ("optim" by default, e.g. "optim_d"
for a GAN's discriminator), so every paradigm gets the same knobs.
"""
from __future__ import annotations

import jax
import optax
from flax import nnx

from jaxnets.errors import UserError


def make_schedule(c, total_steps: int) -> optax.Schedule:
    steps = max(1, total_steps // max(1, c.accumulate_steps))
    if c.schedule == "constant":
        base = optax.constant_schedule(c.lr)
    elif c.schedule in ("cosine", "warmup_cosine"):
        return optax.warmup_cosine_decay_schedule(0.0 if c.warmup_steps else c.lr, c.lr,
                                                  max(c.warmup_steps, 0), max(steps, c.warmup_steps + 1))
    elif c.schedule == "piecewise":
        base = optax.piecewise_constant_schedule(c.lr, {int(b): c.decay_factor for b in c.boundaries})
    else:
        raise UserError(f"Unknown optim.schedule {c.schedule!r}: use constant, cosine, "
                        "warmup_cosine or piecewise.")
    if c.warmup_steps:
        warm = optax.linear_schedule(0.0, c.lr, c.warmup_steps)
        return optax.join_schedules([warm, base], [c.warmup_steps])
    return base


def _decay_mask(decay_all: bool):
    return lambda params: jax.tree.map(lambda p: decay_all or p.ndim > 1, params)


def make_tx(c, total_steps: int) -> optax.GradientTransformation:
    lr = make_schedule(c, total_steps)
    parts = []
    if c.clip_norm:
        parts.append(optax.clip_by_global_norm(c.clip_norm))
    if c.name in ("sgd", "momentum"):
        # Coupled L2 decay, as in the ResNet paper's SGD recipe.
        if c.weight_decay:
            parts.append(optax.add_decayed_weights(c.weight_decay, _decay_mask(c.decay_all)))
        parts.append(optax.sgd(lr, momentum=c.momentum if c.name == "momentum" else None,
                               nesterov=c.nesterov))
    elif c.name == "adam":
        if c.weight_decay:
            parts.append(optax.add_decayed_weights(c.weight_decay, _decay_mask(c.decay_all)))
        parts.append(optax.adam(lr, b1=c.b1, b2=c.b2))
    elif c.name == "adamw":
        parts.append(optax.adamw(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay,
                                 mask=_decay_mask(c.decay_all)))
    else:
        raise UserError(f"Unknown optim.name {c.name!r}: use sgd, momentum, adam or adamw.")
    tx = optax.chain(*parts)
    if c.accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=c.accumulate_steps)
    return tx


class OptimizerFactory:
    """The `make_optimizer` handed to `Task.build`; remembers schedules for logging."""

    def __init__(self, config):
        self.config = config
        self.schedules: dict[str, optax.Schedule] = {}

    def __call__(self, model: nnx.Module, section: str = "optim", wrt=nnx.Param) -> nnx.Optimizer:
        if section not in self.config:
            raise UserError(f"The task asked for optimizer settings config.{section}, which the "
                            "experiment config does not define.")
        c = self.config[section]
        steps = self.config.train.steps
        self.schedules[section] = make_schedule(c, steps)
        return nnx.Optimizer(model, make_tx(c, steps), wrt=wrt)

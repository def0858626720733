"""Sequence labelling: one class per step, for any model mapping tokens [B, T] -> logits [B, T, C].

Reads `batch["tokens"]` [B, T], `batch["labels"]` [B, T] and, if present,
`batch["label_mask"]` [B, T] (1 where a step is scored; padding and unscored steps 0).
Train metrics: loss (mean over scored steps), token accuracy, gradient norm. Eval: loss,
token accuracy, `sequence_accuracy` (every scored step right) and per-class precision /
recall / F1 from the summed confusion matrix (exact under any sharding or padding).

task_options: tokens_key ("tokens"), labels_key ("labels"), label_mask_key ("label_mask").
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxnets import metrics as M
from jaxnets.tasks.base import Inference, State, Task
from jaxnets.tasks.common import build_task_model


class SequenceLabelingTask(Task):
    options = {"tokens_key": "tokens", "labels_key": "labels", "label_mask_key": "label_mask"}
    entry_points = frozenset({"export"})

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.tokens_key = self.opts["tokens_key"]
        self.labels_key = self.opts["labels_key"]
        self.label_mask_key = self.opts["label_mask_key"]
        self.num_classes = dataset.info["num_classes"]

    def build(self, rngs, make_optimizer):
        model = build_task_model(self.config.model, self.config, rngs, num_classes=self.num_classes,
                                 vocab_size=self.dataset.info["vocab_size"])
        return State(model=model, opt=make_optimizer(model))

    def inference_fn(self, state):
        x = self.example_row(self.tokens_key)
        return Inference(self.config.model.name, state.model, lambda m, x: m(x), [(self.tokens_key, x)])

    def _weights(self, batch):
        labels = batch[self.labels_key]
        w = batch.get(self.label_mask_key)
        return jnp.ones(labels.shape, jnp.float32) if w is None else w.astype(jnp.float32)

    def _per_step(self, model, batch, *, train=False, rngs=None):
        logits = model(batch[self.tokens_key], train=train, rngs=rngs)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch[self.labels_key])
        return logits, nll

    def train_step(self, state, batch, rng):
        w = self._weights(batch)

        def loss_fn(model):
            logits, nll = self._per_step(model, batch, train=True, rngs=nnx.Rngs(dropout=rng))
            return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(state.model)
        state.opt.update(state.model, grads)
        correct = (jnp.argmax(logits, -1) == batch[self.labels_key]) * w
        return {"loss": loss, "accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(w), 1.0),
                "grad_norm": optax.tree.norm(grads)}

    def eval_step(self, state, batch):
        logits, nll = self._per_step(state.model, batch)
        w = self._weights(batch) * batch["mask"][:, None]
        pred, labels = jnp.argmax(logits, -1), batch[self.labels_key]
        wrong_steps = jnp.sum((pred != labels) * w, axis=1)
        return {"loss_sum": jnp.sum(nll * w), "steps": jnp.sum(w),
                "correct": jnp.sum((pred == labels) * w),
                "sequences_right": jnp.sum((wrong_steps == 0) * batch["mask"]),
                "sequences": jnp.sum(batch["mask"]),
                "confusion": M.confusion_matrix(labels.reshape(-1), pred.reshape(-1), self.num_classes,
                                                weights=w.reshape(-1))}

    def summarize(self, sums):
        report = M.classification_report(np.asarray(sums["confusion"]))
        report.pop("accuracy", None)
        report.update({"loss": float(sums["loss_sum"] / sums["steps"]),
                       "accuracy": float(sums["correct"] / sums["steps"]),
                       "sequence_accuracy": float(sums["sequences_right"] / sums["sequences"])})
        return report

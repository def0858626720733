"""Supervised classification: images, sequences or vectors in, class logits out.

Reads `batch[input_key]` (default "image") and `batch["label"]`. uint8 images are scaled to
[0, 1]; `config.data.augment` ops (e.g. ("crop:4", "flip")) run on-device inside the jitted
step. Train metrics: loss, accuracy, global gradient norm. Eval: loss, accuracy, per-class
and macro/micro precision/recall/F1 and the confusion matrix, all from summed counts, so
they are exact whatever the sharding or the padding of the last batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxnets import metrics as M
from jaxnets.data.augment import augment, parse_ops
from jaxnets.tasks.base import Inference, State, Task
from jaxnets.tasks.common import build_task_model, image_batch_input


class ClassificationTask(Task):
    # input_mean/input_std: per-channel statistics in [0, 1] units subtracted/divided on the
    # device after scaling uint8 images (e.g. ImageNet's (0.485, 0.456, 0.406)/(0.229, 0.224, 0.225)).
    options = {"input_key": "image", "label_smoothing": 0.0, "input_mean": None, "input_std": None}
    entry_points = frozenset({"export"})

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.input_key = self.opts["input_key"]
        self.label_smoothing = self.opts["label_smoothing"]
        mean, std = self.opts["input_mean"], self.opts["input_std"]
        self.input_mean = None if mean is None else np.asarray(mean, np.float32)
        self.input_std = None if std is None else np.asarray(std, np.float32)
        self.num_classes = dataset.info["num_classes"]
        parse_ops(config.data.augment)  # a bad op fails now, not at the first compile

    def model_defaults(self) -> dict:
        info = self.dataset.info
        defaults = {"num_classes": self.num_classes}
        if "image_shape" in info:
            h, w, ch = info["image_shape"]
            defaults.update(in_channels=ch, input_size=h, in_features=(h, w, ch))
        for key in ("vocab_size", "in_features"):
            if key in info:
                defaults[key] = info[key]
        return defaults

    def build(self, rngs, make_optimizer):
        model = build_task_model(self.config.model, self.config, rngs, **self.model_defaults())
        return State(model=model, opt=make_optimizer(model))

    def inference_fn(self, state):
        """model(x) on inputs in [0, 1] (uint8 pixels / 255), normalised as in training."""
        x = image_batch_input(self.example_row(self.input_key))
        return Inference(self.config.model.name, state.model, lambda m, x: m(self.inputs({self.input_key: x})),
                         [(self.input_key, x)])

    def inputs(self, batch, rng=None):
        x = batch[self.input_key]
        if x.dtype == jnp.uint8:
            x = x.astype(jnp.float32) / 255.0
        if rng is not None and self.config.data.augment:
            x = augment(x, rng, self.config.data.augment)
        if self.input_mean is not None:
            x = x - self.input_mean
        if self.input_std is not None:
            x = x / self.input_std
        return x

    def loss(self, logits, labels):
        targets = optax.smooth_labels(jax.nn.one_hot(labels, self.num_classes), self.label_smoothing) \
            if self.label_smoothing else jax.nn.one_hot(labels, self.num_classes)
        return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)

    def train_step(self, state, batch, rng):
        aug_rng, dropout_rng = jax.random.split(rng)
        x, labels = self.inputs(batch, aug_rng), batch["label"]

        def loss_fn(model):
            logits = model(x, train=True, rngs=nnx.Rngs(dropout=dropout_rng))
            return self.loss(logits, labels).mean(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(state.model)
        state.opt.update(state.model, grads)
        return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
                "grad_norm": optax.tree.norm(grads)}

    def eval_step(self, state, batch):
        logits = state.model(self.inputs(batch), train=False)
        mask = batch["mask"]
        return {"loss_sum": jnp.sum(self.loss(logits, batch["label"]) * mask),
                "count": jnp.sum(mask),
                "confusion": M.confusion_matrix(batch["label"], jnp.argmax(logits, -1),
                                                self.num_classes, weights=mask)}

    def summarize(self, sums):
        report = M.classification_report(np.asarray(sums["confusion"]))
        report["loss"] = float(sums["loss_sum"] / sums["count"])
        report["confusion_matrix"] = np.asarray(sums["confusion"]).astype(int).tolist()
        return report

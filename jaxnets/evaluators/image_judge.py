"""The image judge: a trained MNIST classifier that scores generated digits.

`ImageJudge.load(judge_dir)` reads the classifier that `experiments/mnist_cnn.py:smoke` (shipped
as `jaxnets.configs.mnist_cnn`) trained into `judge_dir`: read-only, on this process's first
local device, so every process of a job holds the same small copy and scores alike (no
collective, nothing gathered). `score` gives class accuracy against requested labels, mean
confidence, class coverage (1 - total variation between the predicted-class histogram and
uniform: 1 for balanced samples, 0.1 for total mode collapse) and the Frechet distance of the
judge's penultimate features to reference images (FID's formula in this feature space).

`ImageJudgeEvaluator` (kind "image_judge") asks the task for the image sets it wants judged
(`task.judged_images(state, context)`: prefix -> images, requested labels or None, and whether
to compare with held-out digits) and reports `eval/{prefix}{score}` plus the judge's own
held-out accuracy. The judge is a prerequisite run: `jaxnets train` trains it first (once, on
all processes together) when `judge_dir` holds no finished run.
"""
from __future__ import annotations

import json

import jax
import numpy as np
from flax import nnx

from jaxnets.configs.mnist_cnn import get_config as mnist_cnn_config
from jaxnets.data import load_dataset
from jaxnets.errors import UserError
from jaxnets.evaluators.base import EvalContext, Evaluator
from jaxnets.images import class_coverage, frechet_distance
from jaxnets.tasks import TASKS
from jaxnets.tasks.common import heldout_images
from jaxnets.train import checkpoint as ckpt
from jaxnets.train import resume, storage
from jaxnets.train.optim import OptimizerFactory


def judge_config():
    """The classifier config: experiments/mnist_cnn.py's smoke preset, shipped in the package
    (jaxnets/configs/mnist_cnn.py) so that an installed wheel can train the judge."""
    config = mnist_cnn_config("smoke")
    config.train.progress = False
    config.train.report = False
    return config


class ImageJudge:
    """A trained MNIST CNN used as a measuring stick for generated digits in [0, 1]."""

    def __init__(self, model, heldout_accuracy: float, batch_size: int = 500):
        self.model, self.heldout_accuracy, self.batch_size = model, heldout_accuracy, batch_size
        graphdef, state = nnx.split(model)

        @jax.jit
        def forward(state, x):
            net = nnx.merge(graphdef, state)
            feats = net.features(x)   # penultimate activations: ReLU(fc), before dropout and head
            return feats, jax.nn.softmax(net.head(feats))

        self._forward = lambda x: forward(state, x)

    @classmethod
    def load(cls, judge_dir: str, batch_size: int = 500) -> "ImageJudge":
        """The judge trained into `judge_dir` (read-only; UserError if there is none)."""
        if not storage.exists(storage.join(judge_dir, "final.json")):
            raise UserError(
                f"No trained image judge in {judge_dir!r} (no final.json). Train it first: "
                f"`jaxnets train --config experiments/mnist_cnn.py:smoke --workdir {judge_dir}` "
                "(`jaxnets train` of a generative experiment does it by itself).")
        config = judge_config()
        dataset = load_dataset(config.data.name, **config.data.options)
        task = TASKS.get(config.task)(config, dataset)
        with jax.default_device(jax.local_devices()[0]):   # a private copy on this process
            module = task.build(nnx.Rngs(config.seed), OptimizerFactory(config))
        graphdef, state = nnx.split(module)
        pure = state.to_pure_dict()
        checkpointer = ckpt.Checkpointer(judge_dir, config.train.keep_checkpoints, read_only=True)
        try:
            found = resume.restore_newest_good(checkpointer, pure, ckpt.signature(pure),
                                               read_only=True, log=lambda m: None)
        finally:
            checkpointer.close()
        if found is None:
            raise UserError(f"The image judge in {judge_dir!r} has no checkpoint to load.")
        nnx.replace_by_pure_dict(state, found[1])
        final = json.loads(storage.read_text(storage.join(judge_dir, "final.json")))
        accuracy = float((final.get("metrics") or {}).get("eval/accuracy") or float("nan"))
        return cls(nnx.merge(graphdef, state).model, accuracy, batch_size)

    def features_and_probs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images, np.float32)
        feats, probs = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            pad = self.batch_size - len(chunk)   # fixed shapes: one compile
            f, p = self._forward(np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)]))
            feats.append(np.asarray(f)[:len(chunk)])
            probs.append(np.asarray(p)[:len(chunk)])
        return np.concatenate(feats), np.concatenate(probs)

    def score(self, images: np.ndarray, labels: np.ndarray | None = None,
              reference: np.ndarray | None = None) -> dict[str, float]:
        """images in [0, 1]; labels: requested classes (optional); reference: real images."""
        feats, probs = self.features_and_probs(images)
        predicted = probs.argmax(-1)
        out = {"confidence": float(probs.max(-1).mean()), "coverage": class_coverage(predicted)}
        if labels is not None:
            out["class_accuracy"] = float(np.mean(predicted == np.asarray(labels)))
        if reference is not None:
            out["frechet"] = frechet_distance(feats, self.features_and_probs(reference)[0])
        return out


class ImageJudgeEvaluator(Evaluator):
    """options: judge_dir (None: off), reference (held-out digits compared with, default 1000)."""

    def __init__(self, name, options, task, dataset):
        super().__init__(name, options, task, dataset)
        self.judge_dir = self.options.get("judge_dir")
        self.reference = int(self.options.get("reference", 1000))
        unknown = sorted(set(self.options) - {"judge_dir", "reference"})
        if unknown:
            raise UserError(f"Evaluator {name!r} (image_judge) has no option(s) {unknown}; it takes "
                            "every, judge_dir, reference.")
        self.enabled = bool(self.judge_dir)
        if self.enabled and not hasattr(task, "judged_images"):
            raise UserError(f"Evaluator {name!r} (image_judge) needs a task that generates images; "
                            f"task {type(task).__name__} has no `judged_images`.")
        self._judge = None

    @classmethod
    def prerequisites(cls, options):
        judge_dir = options.get("judge_dir")
        return [(judge_config(), judge_dir)] if judge_dir else []

    def __call__(self, state, context: EvalContext):
        if self._judge is None:
            self._judge = ImageJudge.load(self.judge_dir)
        split = self.task.config.data.eval_split or self.task.config.data.train_split
        real, _ = heldout_images(self.dataset, split, self.reference)
        metrics = {"eval/judge_heldout_accuracy": self._judge.heldout_accuracy}
        for prefix, (images, labels, compare) in self.task.judged_images(state, context).items():
            got = self._judge.score(images, labels, reference=real if compare else None)
            metrics.update({f"eval/{prefix}{k}": v for k, v in got.items()})
        return metrics

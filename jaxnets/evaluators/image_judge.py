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
import os

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from jaxnets import storage

from jaxnets.config import load_config
from jaxnets.data import load_dataset
from jaxnets.errors import UserError
from jaxnets.evaluators.evaluator import EvalContext, Evaluator
from jaxnets.images import class_coverage, frechet_distance
from jaxnets.tasks import TASKS
from jaxnets.tasks.common import heldout_images


# Loaded as a config file (like experiments/), not imported: configs sit above the trainer.
JUDGE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "configs", "mnist_cnn.py")


def judge_config():
    """The classifier config: experiments/mnist_cnn.py's smoke preset, shipped in the package
    (jaxnets/configs/mnist_cnn.py) so that an installed wheel can train the judge."""
    config = load_config(JUDGE_CONFIG + ":smoke")
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
            state = task.build(nnx.Rngs(config.seed), _no_optimizer)
        model = state.model
        _load_params(model, judge_dir)
        final = json.loads(storage.read_text(storage.join(judge_dir, "final.json")))
        accuracy = float((final.get("metrics") or {}).get("eval/accuracy") or float("nan"))
        return cls(model, accuracy, batch_size)

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


def _no_optimizer(module, section="optim"):
    """The judge only predicts: its optimizer state is neither built for real nor loaded."""
    return nnx.Optimizer(module, optax.sgd(0.0), wrt=nnx.Param)


def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def _load_params(model: nnx.Module, judge_dir: str) -> None:
    """Fill `model`'s parameters from the newest checkpoint of `judge_dir` (its "state" item,
    saved by the trainer as {"model": ..., "opt": ...}), read as host arrays: read-only, no
    collective, every process alike."""
    root = storage.resolve(judge_dir) / "checkpoints"
    steps = sorted(int(d.name) for d in root.iterdir() if d.name.isdigit()) if root.exists() else []
    if not steps:
        raise UserError(f"The image judge in {judge_dir!r} has no checkpoint to load.")
    where = root / str(steps[-1]) / "state"
    try:
        with ocp.PyTreeCheckpointer() as reader:
            tree = reader.metadata(where).item_metadata.tree
            restore = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            saved = reader.restore(where, args=ocp.args.PyTreeRestore(restore_args=restore))
    except Exception as e:   # noqa: BLE001 - any failure: the judge must be retrained or fixed
        raise UserError(f"The image judge's checkpoint {where} cannot be read ({type(e).__name__}: "
                        f"{str(e)[:200]}); retrain it: remove {judge_dir!r} and run again.") from e
    by_path = {_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(saved["model"])[0]}
    params = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))
    missing = [_path(p) for p, _ in leaves if _path(p) not in by_path]
    if missing:
        raise UserError(f"The image judge's checkpoint {where} lacks {missing[:3]}: it holds "
                        f"another model; remove {judge_dir!r} to retrain the judge.")
    values = [np.asarray(by_path[_path(p)]).astype(x.dtype) for p, x in leaves]
    nnx.replace_by_pure_dict(params, jax.tree_util.tree_unflatten(treedef, values))
    nnx.update(model, params)


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

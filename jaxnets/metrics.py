"""Classification and regression metrics that stream over eval batches and stay exact under sharding.

The jittable half (`confusion_matrix`, `regression_sums`) returns only sums of per-example
terms, so summing its outputs over batches, devices or hosts gives exactly the counts of the
whole split. The host half (`classification_report`, `regression_report`) turns the summed
counts into ratios once, in NumPy float64, at the end of an evaluation.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


ORIENTATIONS = ("true", "predicted")


def _check_rows(rows: str) -> None:
    if rows not in ORIENTATIONS:
        raise ValueError(f"rows must be 'true' or 'predicted', got {rows!r}.")


def confusion_matrix(labels, preds, num_classes: int, weights=None, rows: str = "true"):
    """float32 [C, C] counts. Default (rows="true", sklearn's convention): cm[t, p] counts
    examples of true class t predicted as p. rows="predicted" gives the transpose, cm[p, t],
    the orientation of the course's tables (a row per prediction: TP FP / FN TN for a binary
    task whose class 0 is "positive"). Pass the same `rows` to `classification_report`.

    `weights` (e.g. the eval padding mask) weight each example; padded rows with weight 0
    contribute nothing. Implemented as a one-hot matmul contracting the batch axis, which XLA
    shards over the batch with one all-reduce (and which needs only N*C memory, not N*C*C).
    """
    _check_rows(rows)
    labels = jnp.asarray(labels).reshape(-1)
    preds = jnp.asarray(preds).reshape(-1)
    # one_hot maps out-of-range ids (e.g. a -1 padding label) to all-zero rows: they count nowhere.
    true_1h = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)     # [N, C]
    pred_1h = jax.nn.one_hot(preds, num_classes, dtype=jnp.float32)      # [N, C]
    if weights is not None:
        true_1h = true_1h * jnp.asarray(weights, jnp.float32).reshape(-1, 1)
    # The counts are summed over the (possibly sharded) batch axis: ask for a replicated result
    # on the inputs' own mesh, which explicit-sharding meshes require for a sharded contraction
    # and which is a no-op without a mesh. HIGHEST precision keeps weighted counts out of bf16.
    replicated = NamedSharding(jax.typeof(true_1h).sharding.mesh, PartitionSpec())
    spec = "nt,np->tp" if rows == "true" else "nt,np->pt"
    return jnp.einsum(spec, true_1h, pred_1h, precision="highest", out_sharding=replicated)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's zero_division=0)."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def classification_report(cm, rows: str = "true") -> dict:
    """Accuracy, per-class/macro/micro precision, recall and F1 from summed confusion counts
    (`rows`: the orientation `cm` was made with, as in `confusion_matrix`)."""
    _check_rows(rows)
    cm = np.asarray(cm, np.float64)
    if rows == "predicted":
        cm = cm.T   # from here on rows are true classes
    true_pos = np.diag(cm)
    predicted = cm.sum(axis=0)         # column sums: how often each class was predicted
    actual = cm.sum(axis=1)            # row sums: how often each class occurs
    total = cm.sum()

    precision = _safe_divide(true_pos, predicted)
    recall = _safe_divide(true_pos, actual)
    f1 = _safe_divide(2 * precision * recall, precision + recall)

    # Micro averages pool all decisions: with one label per example, every false positive
    # of one class is a false negative of another, so micro P = micro R = accuracy.
    tp_sum = true_pos.sum()
    micro_p = float(_safe_divide(tp_sum, predicted.sum()))
    micro_r = float(_safe_divide(tp_sum, actual.sum()))
    micro_f1 = float(_safe_divide(2 * micro_p * micro_r, micro_p + micro_r))
    return {
        "accuracy": float(_safe_divide(tp_sum, total)),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": micro_f1,
    }


def regression_sums(targets, preds, weights=None) -> dict:
    """Jittable sums {"count", "abs_err", "sq_err"} over all elements (weighted per example).

    `weights` has one entry per example (leading axis); it broadcasts over the remaining axes
    and `count` counts weighted elements, so MAE/MSE are per element as in sklearn.
    """
    targets = jnp.asarray(targets, jnp.float32)
    preds = jnp.asarray(preds, jnp.float32)
    err = preds - targets
    if weights is None:
        w = jnp.ones_like(err)
    else:
        w = jnp.asarray(weights, jnp.float32)
        w = jnp.broadcast_to(w.reshape(w.shape + (1,) * (err.ndim - w.ndim)), err.shape)
    return {
        "count": jnp.sum(w),
        "abs_err": jnp.sum(w * jnp.abs(err)),
        "sq_err": jnp.sum(w * jnp.square(err)),
    }


def regression_report(sums: Mapping) -> dict:
    """MAE, MSE and RMSE from summed `regression_sums` (0 when nothing was counted)."""
    count = np.float64(sums["count"])
    mae = float(_safe_divide(sums["abs_err"], count))
    mse = float(_safe_divide(sums["sq_err"], count))
    return {"mae": mae, "mse": mse, "rmse": float(np.sqrt(mse))}

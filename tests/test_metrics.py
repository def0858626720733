"""jaxnets.metrics against sklearn.metrics, streamed over padded batches and sharded over 8 devices."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from sklearn import metrics as skm

from jaxnets.metrics import (classification_report, confusion_matrix, regression_report,
                             regression_sums)

NUM_CLASSES = 7


def _random_classification(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    # Mostly right with some noise, and class 6 never predicted: exercises zero division.
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, NUM_CLASSES - 1, n))
    preds = np.where(preds == NUM_CLASSES - 1, 0, preds)
    return labels.astype(np.int32), preds.astype(np.int32)


def _sklearn_report(labels, preds, sample_weight=None):
    kw = dict(labels=list(range(NUM_CLASSES)), zero_division=0, sample_weight=sample_weight)
    p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, average=None, **kw)
    out = {"accuracy": skm.accuracy_score(labels, preds, sample_weight=sample_weight),
           "precision": p, "recall": r, "f1": f}
    for avg in ("macro", "micro"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(labels, preds, average=avg, **kw)
        out.update({f"{avg}_precision": ap, f"{avg}_recall": ar, f"{avg}_f1": af})
    return out


def _assert_report_close(ours, ref):
    assert set(ours) == set(ref)
    for key in ref:
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-12, atol=1e-12, err_msg=key)


def test_confusion_matrix_and_report_match_sklearn():
    labels, preds = _random_classification(1000, seed=0)
    cm = confusion_matrix(labels, preds, NUM_CLASSES)
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES) and cm.dtype == np.float32
    ref_cm = skm.confusion_matrix(labels, preds, labels=list(range(NUM_CLASSES)))
    np.testing.assert_array_equal(np.asarray(cm), ref_cm)
    _assert_report_close(classification_report(cm), _sklearn_report(labels, preds))


def test_weights_match_sklearn_sample_weight():
    labels, preds = _random_classification(500, seed=1)
    weights = np.random.default_rng(2).integers(0, 4, 500).astype(np.float32)
    cm = confusion_matrix(labels, preds, NUM_CLASSES, weights)
    ref_cm = skm.confusion_matrix(labels, preds, labels=list(range(NUM_CLASSES)),
                                  sample_weight=weights)
    np.testing.assert_array_equal(np.asarray(cm), ref_cm)
    _assert_report_close(classification_report(cm), _sklearn_report(labels, preds, weights))


def test_empty_counts_give_zeros_not_nans():
    report = classification_report(np.zeros((3, 3)))
    assert report["accuracy"] == 0.0 and report["macro_f1"] == 0.0 and report["f1"] == [0.0] * 3
    assert regression_report({"count": 0.0, "abs_err": 0.0, "sq_err": 0.0}) == {
        "mae": 0.0, "mse": 0.0, "rmse": 0.0}


def test_streaming_over_padded_uneven_batches_equals_one_shot():
    labels, preds = _random_classification(1003, seed=3)
    targets = np.random.default_rng(4).normal(size=(1003, 3)).astype(np.float32)
    outputs = targets + np.random.default_rng(5).normal(size=(1003, 3)).astype(np.float32)
    batch = 128   # the last batch holds 1003 - 7 * 128 = 107 real rows and 21 padding rows
    step_cm = jax.jit(confusion_matrix, static_argnums=2)
    step_reg = jax.jit(regression_sums)
    cm_total = np.zeros((NUM_CLASSES, NUM_CLASSES))
    reg_total = {"count": 0.0, "abs_err": 0.0, "sq_err": 0.0}
    for start in range(0, 1003, batch):
        sl = slice(start, start + batch)
        real = len(labels[sl])
        pad = batch - real
        mask = np.r_[np.ones(real), np.zeros(pad)].astype(np.float32)
        # Padding rows hold garbage on purpose: the mask alone must keep them out.
        lab = np.r_[labels[sl], np.full(pad, 3)].astype(np.int32)
        prd = np.r_[preds[sl], np.full(pad, 5)].astype(np.int32)
        tgt = np.concatenate([targets[sl], np.full((pad, 3), 9.0, np.float32)])
        out = np.concatenate([outputs[sl], np.full((pad, 3), -9.0, np.float32)])
        cm_total += np.asarray(step_cm(lab, prd, NUM_CLASSES, mask))
        for k, v in step_reg(tgt, out, mask).items():
            reg_total[k] += float(v)

    ref_cm = skm.confusion_matrix(labels, preds, labels=list(range(NUM_CLASSES)))
    np.testing.assert_array_equal(cm_total, ref_cm)
    _assert_report_close(classification_report(cm_total), _sklearn_report(labels, preds))

    report = regression_report(reg_total)
    t64, o64 = targets.astype(np.float64), outputs.astype(np.float64)
    mse = skm.mean_squared_error(t64, o64)
    # float32 per-batch sums of ~400 terms each: relative error ~ sqrt(n) * 2**-24.
    np.testing.assert_allclose(report["mae"], skm.mean_absolute_error(t64, o64), rtol=1e-5)
    np.testing.assert_allclose(report["mse"], mse, rtol=1e-5)
    np.testing.assert_allclose(report["rmse"], np.sqrt(mse), rtol=1e-5)
    assert reg_total["count"] == 1003 * 3


@pytest.mark.parametrize("explicit_axes", [True, False])
def test_sharded_equals_unsharded(explicit_axes):
    assert jax.device_count() == 8, "conftest forces 8 CPU devices"
    if explicit_axes:
        mesh = jax.make_mesh((8,), ("data",))              # Explicit axes (the default)
    else:
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))   # Auto axes
    batch_sharding = NamedSharding(mesh, P("data"))
    labels, preds = _random_classification(256, seed=6)
    mask = (np.arange(256) < 250).astype(np.float32)
    targets = np.random.default_rng(7).normal(size=(256, 4)).astype(np.float32)
    outputs = np.random.default_rng(8).normal(size=(256, 4)).astype(np.float32)

    def eval_sums(lab, prd, tgt, out, w):
        return confusion_matrix(lab, prd, NUM_CLASSES, w), regression_sums(tgt, out, w)

    args = (labels, preds, targets, outputs, mask)
    sharded_args = [jax.device_put(a, batch_sharding) for a in args]
    assert len(sharded_args[0].sharding.device_set) == 8
    cm_s, reg_s = jax.jit(eval_sums)(*sharded_args)
    cm_u, reg_u = jax.jit(eval_sums)(*args)
    np.testing.assert_array_equal(np.asarray(cm_s), np.asarray(cm_u))
    ref_cm = skm.confusion_matrix(labels, preds, labels=list(range(NUM_CLASSES)),
                                  sample_weight=mask)
    np.testing.assert_array_equal(np.asarray(cm_s), ref_cm)
    for k in reg_u:
        # Only the summation order differs between 8 partial sums and one: float32 rounding.
        np.testing.assert_allclose(float(reg_s[k]), float(reg_u[k]), rtol=1e-6)
    ref = regression_report({k: float(v) for k, v in reg_s.items()})
    keep = mask.astype(bool)
    np.testing.assert_allclose(
        ref["mse"], skm.mean_squared_error(targets[keep].astype(np.float64),
                                           outputs[keep].astype(np.float64)), rtol=1e-5)


def test_confusion_matrix_course_orientation_worked_example():
    """A 2x2 table as the course draws it: rows = predicted, columns = actual, class 0 =
    positive. 40 TP, 10 FP, 5 FN, 45 TN -> precision 40/50, recall 40/45, F1 = 2PR/(P+R)."""
    tp, fp, fn, tn = 40, 10, 5, 45
    labels = np.array([0] * tp + [1] * fp + [0] * fn + [1] * tn)   # actual
    preds = np.array([0] * tp + [0] * fp + [1] * fn + [1] * tn)    # predicted
    course = np.array([[tp, fp], [fn, tn]])
    np.testing.assert_array_equal(confusion_matrix(labels, preds, 2, rows="predicted"), course)
    np.testing.assert_array_equal(confusion_matrix(labels, preds, 2), course.T)   # rows = true
    rep = classification_report(course, rows="predicted")
    p, r = 40 / 50, 40 / 45
    assert rep["precision"][0] == pytest.approx(p) and rep["recall"][0] == pytest.approx(r)
    assert rep["f1"][0] == pytest.approx(2 * p * r / (p + r))
    assert rep["accuracy"] == pytest.approx((tp + tn) / 100)
    assert rep == classification_report(course.T)   # the same numbers from either orientation
    with pytest.raises(ValueError, match="rows"):
        confusion_matrix(labels, preds, 2, rows="pred")

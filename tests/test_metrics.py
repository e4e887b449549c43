"""Metrics against values worked out by hand on small label arrays."""
import numpy as np
import pytest

from bpc import metrics

# true: 0 0 1 1 2 2
# pred: 0 1 1 1 2 0
# class 0: TP 1, predicted 2 (rows 0, 5), actual 2 -> P 1/2, R 1/2, F1 1/2
# class 1: TP 2, predicted 3 (rows 1-3),  actual 2 -> P 2/3, R 1,   F1 4/5
# class 2: TP 1, predicted 1,             actual 2 -> P 1,   R 1/2, F1 2/3
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])


def test_accuracy():
    assert metrics.accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    assert metrics.accuracy([1, 2], [1, 2]) == 1.0


def test_confusion_matrix():
    np.testing.assert_array_equal(metrics.confusion_matrix(Y_TRUE, Y_PRED),
                                  [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED, num_classes=4)
    assert cm.shape == (4, 4) and cm.sum() == 6 and cm[3].sum() == 0 and cm.dtype == np.int64


def test_macro_precision_recall_f1():
    assert metrics.precision(Y_TRUE, Y_PRED) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert metrics.recall(Y_TRUE, Y_PRED) == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert metrics.f1(Y_TRUE, Y_PRED) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_classes_never_predicted_or_present_count_as_zero():
    # class 1 is never predicted: its precision is 0, recall 0, F1 0
    y_true, y_pred = np.array([0, 1, 1, 0]), np.array([0, 0, 0, 0])
    assert metrics.precision(y_true, y_pred) == pytest.approx((2 / 4 + 0) / 2)
    assert metrics.recall(y_true, y_pred) == pytest.approx((1 + 0) / 2)
    assert metrics.f1(y_true, y_pred) == pytest.approx((2 * 0.5 * 1 / 1.5 + 0) / 2)
    # num_classes adds a class absent from both arrays to the average
    assert metrics.recall(y_true, y_pred, num_classes=3) == pytest.approx(1 / 3)


def test_labels_that_occur_are_averaged_over():
    # labels 3 and 7 only: perfect on both
    assert metrics.f1([3, 7, 7], [3, 7, 7]) == 1.0
    assert metrics.precision([3, 7], [7, 7]) == pytest.approx((0 + 1 / 2) / 2)


def test_agrees_with_scikit_learn_on_random_labels():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    assert metrics.precision(y_true, y_pred) == pytest.approx(skm.precision_score(y_true, y_pred, average="macro"))
    assert metrics.recall(y_true, y_pred) == pytest.approx(skm.recall_score(y_true, y_pred, average="macro"))
    assert metrics.f1(y_true, y_pred) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    np.testing.assert_array_equal(metrics.confusion_matrix(y_true, y_pred), skm.confusion_matrix(y_true, y_pred))


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.accuracy([0, 1], [0, 1, 1]), r"y_true has shape \(2,\) but y_pred has \(3,\)"),
    (lambda: metrics.f1([0.5, 1.0], [0, 1]), "y_true must hold integer class labels"),
    (lambda: metrics.precision([], []), "no labels"),
    (lambda: metrics.confusion_matrix([0, 5], [0, 1], num_classes=3), r"label 5 is outside range\(3\)"),
    (lambda: metrics.confusion_matrix([0, -1], [0, 1]), "non-negative"),
    (lambda: metrics.get("auc"), "unknown metric 'auc'"),
])
def test_bad_input_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_report_gives_every_metric_the_confusion_matrix_and_its_text():
    y, p = np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 2, 1])
    scores, cm, text = metrics.report(y, p, num_classes=3, rows="true digit")
    assert scores == {name: fn(y, p) for name, fn in metrics.METRICS.items()}
    np.testing.assert_array_equal(cm, metrics.confusion_matrix(y, p, num_classes=3))
    assert text.splitlines() == [
        "test accuracy 0.8000   macro precision 0.8889   recall 0.8333   F1 0.8222",
        "confusion matrix (rows: true digit, columns: predicted):",
        "       0   1   2",
        "  0:   1   0   0",
        "  1:   0   1   1",
        "  2:   0   0   2"]

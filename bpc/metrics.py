"""Classification metrics on NumPy label arrays.

Precision, recall and F1 are macro averaged: computed per class, then
averaged with equal weight over the classes (those in `range(num_classes)`
when it is given, else every label that occurs in y_true or y_pred). A class
never predicted has precision 0, one never present has recall 0, and F1 is
0 where precision + recall is 0 (scikit-learn's `zero_division=0`).
"""
import numpy as np


def _labels(y_true, y_pred, who):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{who}: y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError(f"{who}: no labels given")
    for name, a in (("y_true", y_true), ("y_pred", y_pred)):
        if a.dtype.kind not in "biuf" or (a.dtype.kind == "f" and not np.all(a == np.round(a))):
            raise ValueError(f"{who}: {name} must hold integer class labels, got {a.dtype} values")
    return y_true.astype(np.int64).ravel(), y_pred.astype(np.int64).ravel()


def accuracy(y_true, y_pred):
    """The fraction of labels predicted exactly."""
    y_true, y_pred = _labels(y_true, y_pred, "accuracy")
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true, y_pred, num_classes=None):
    """counts[i, j] = number of examples of true class i predicted as j.
    Classes are 0..num_classes-1 (default: up to the largest label seen)."""
    y_true, y_pred = _labels(y_true, y_pred, "confusion_matrix")
    if min(y_true.min(), y_pred.min()) < 0:
        raise ValueError("confusion_matrix: labels must be non-negative")
    seen = int(max(y_true.max(), y_pred.max())) + 1
    if num_classes is None:
        num_classes = seen
    elif seen > num_classes:
        raise ValueError(f"confusion_matrix: label {seen - 1} is outside range({num_classes})")
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def _per_class(y_true, y_pred, num_classes, who):
    """(true positives, predicted counts, actual counts) for the classes averaged over."""
    y_true, y_pred = _labels(y_true, y_pred, who)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    if num_classes is None:  # only the labels that occur
        classes = np.union1d(y_true, y_pred)
        cm = cm[np.ix_(classes, classes)]
    return np.diag(cm).astype(np.float64), cm.sum(axis=0).astype(np.float64), cm.sum(axis=1).astype(np.float64)


def _safe_div(a, b):
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def precision(y_true, y_pred, num_classes=None):
    """Macro-averaged precision: mean over classes of TP / predicted."""
    tp, predicted, _ = _per_class(y_true, y_pred, num_classes, "precision")
    return float(np.mean(_safe_div(tp, predicted)))


def recall(y_true, y_pred, num_classes=None):
    """Macro-averaged recall: mean over classes of TP / actual."""
    tp, _, actual = _per_class(y_true, y_pred, num_classes, "recall")
    return float(np.mean(_safe_div(tp, actual)))


def f1(y_true, y_pred, num_classes=None):
    """Macro-averaged F1: mean over classes of 2 P R / (P + R)."""
    tp, predicted, actual = _per_class(y_true, y_pred, num_classes, "f1")
    p, r = _safe_div(tp, predicted), _safe_div(tp, actual)
    return float(np.mean(_safe_div(2 * p * r, p + r)))


METRICS = {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}


def report(y_true, y_pred, num_classes=None, rows="true class"):
    """(scores, confusion matrix, text): every metric in METRICS, and the
    lines the examples print (the scores, then the confusion matrix with
    `rows` naming what its rows are)."""
    scores = {name: fn(y_true, y_pred) for name, fn in METRICS.items()}
    cm = confusion_matrix(y_true, y_pred, num_classes=num_classes)
    lines = [f"test accuracy {scores['accuracy']:.4f}   macro precision {scores['precision']:.4f}   "
             f"recall {scores['recall']:.4f}   F1 {scores['f1']:.4f}",
             f"confusion matrix (rows: {rows}, columns: predicted):",
             "     " + " ".join(f"{j:3d}" for j in range(len(cm)))]
    lines += [f"  {i}: " + " ".join(f"{v:3d}" for v in row) for i, row in enumerate(cm)]
    return scores, cm, "\n".join(lines)


def get(name):
    """A metric function by name (or a callable `(y_true, y_pred) -> float`)."""
    if callable(name):
        return name
    if name in METRICS:
        return METRICS[name]
    raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(repr(k) for k in METRICS)} "
                     "or a callable (y_true, y_pred) -> float")

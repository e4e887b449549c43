"""Mini-batches and train/test splits of NumPy data, deterministic given a seed.

`seed` arguments take an int (the same order on every call) or a
`numpy.random.Generator` (a new order on every call, reproducible from the
generator's state: `bpc.fit` shuffles each epoch this way and checkpoints
the generator's state).
"""
import math

import numpy as np


# ----- argument checks shared by bpc.data, bpc.optim, bpc.nn and bpc.train -------------

def check_int(value, what, low=1):
    """`value` as an int >= `low`, else a ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        kind = {0: "a non-negative int", 1: "a positive int"}.get(low, f"an int >= {low}")
        raise ValueError(f"{what} must be {kind}, got {value!r}")
    return int(value)


def check_number(value, what, low=None, high=None, low_open=False, high_open=False):
    """`value` as a finite float within [low, high] (open ends where asked),
    else a ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    value = float(value)
    bad = (not math.isfinite(value)
           or (low is not None and (value < low or (low_open and value == low)))
           or (high is not None and (value > high or (high_open and value == high))))
    if bad:
        interval = ("(" if low_open else "[") + ("-inf" if low is None else f"{low:g}") + ", " \
            + ("inf" if high is None else f"{high:g}") + (")" if high_open else "]")
        raise ValueError(f"{what} must be in {interval}, got {value!r}")
    return value


# ----- batches and splits ---------------------------------------------------------------

def rng_from(seed):
    """A `numpy.random.Generator` from an int seed (or pass one through)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0):
        return np.random.default_rng(seed)
    raise ValueError(f"seed must be a non-negative int, None or a numpy.random.Generator, got {seed!r}")


def check_xy(X, Y, who):
    """X and Y as arrays with the same (non-zero) number of rows."""
    X, Y = np.asarray(X), np.asarray(Y)
    if X.ndim == 0 or Y.ndim == 0:
        raise ValueError(f"{who}: X and Y must be arrays with one row per example, "
                         f"got shapes {X.shape} and {Y.shape}")
    if len(X) != len(Y):
        raise ValueError(f"{who}: X has {len(X)} rows but Y has {len(Y)}; they must match")
    if len(X) == 0:
        raise ValueError(f"{who}: X and Y are empty")
    return X, Y


def index_batches(n, batch_size, shuffle=True, seed=0, drop_last=False):
    """Arrays of row indices covering range(n) once, `batch_size` at a time
    (the last batch may be smaller unless `drop_last`)."""
    n = check_int(n, "index_batches: n")
    batch_size = check_int(batch_size, "batch_size")
    order = rng_from(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def batches(X, Y, batch_size, shuffle=True, seed=0, drop_last=False):
    """Yield `(xb, yb)` mini-batches covering every row once (in a random
    order when `shuffle`, deterministic given `seed`)."""
    X, Y = check_xy(X, Y, "batches")
    for idx in index_batches(len(X), batch_size, shuffle, seed, drop_last):
        yield X[idx], Y[idx]


def _test_count(test_size, n):
    if isinstance(test_size, (float, np.floating)) and 0.0 < test_size < 1.0:
        k = math.ceil(test_size * n)
    elif isinstance(test_size, (int, np.integer)) and not isinstance(test_size, bool) and test_size >= 1:
        k = int(test_size)
    else:
        raise ValueError(f"test_size must be a fraction in (0, 1) or a positive int, got {test_size!r}")
    if not 1 <= k <= n - 1:
        raise ValueError(f"test_size {test_size!r} leaves {n - k} of {n} rows for training and {k} "
                         "for testing; both must be non-empty")
    return k


def train_test_split(X, Y, test_size=0.2, seed=0, stratify=False):
    """Split rows at random into (X_train, X_test, Y_train, Y_test).

    `test_size` is a fraction of the rows or a count. With `stratify`, each
    label of Y keeps (about) its share in both parts."""
    X, Y = check_xy(X, Y, "train_test_split")
    n = len(X)
    k = _test_count(test_size, n)
    rng = rng_from(seed)
    if not stratify:
        order = rng.permutation(n)
        test, train = order[:k], order[k:]
    else:
        if Y.ndim != 1:
            raise ValueError(f"train_test_split: stratify needs 1-d labels, Y has shape {Y.shape}")
        test, train = [], []
        for label in np.unique(Y):
            idx = rng.permutation(np.flatnonzero(Y == label))
            take = int(round(k * len(idx) / n))
            test.append(idx[:take])
            train.append(idx[take:])
        test, train = rng.permutation(np.concatenate(test)), rng.permutation(np.concatenate(train))
        if len(test) == 0 or len(train) == 0:
            raise ValueError(f"train_test_split: test_size {test_size!r} is too small or too large "
                             "to stratify these labels")
    return X[train], X[test], Y[train], Y[test]

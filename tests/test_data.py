"""Mini-batches and splits: coverage, determinism, errors."""
import numpy as np
import pytest

from bpc import data

X = np.arange(23 * 2).reshape(23, 2)
Y = np.arange(23)


def _rows(batches):
    return np.concatenate([yb for _, yb in batches])


def test_batches_cover_every_row_once_with_matching_pairs():
    out = list(data.batches(X, Y, batch_size=5, seed=3))
    assert [len(yb) for _, yb in out] == [5, 5, 5, 5, 3]
    assert sorted(_rows(out)) == list(range(23))
    for xb, yb in out:
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)     # rows stay paired
    assert not np.array_equal(_rows(out), Y)                # shuffled


def test_batches_are_deterministic_for_a_seed():
    a = _rows(data.batches(X, Y, 4, seed=1))
    np.testing.assert_array_equal(a, _rows(data.batches(X, Y, 4, seed=1)))
    assert not np.array_equal(a, _rows(data.batches(X, Y, 4, seed=2)))


def test_a_generator_gives_a_new_reproducible_order_each_epoch():
    rng = np.random.default_rng(0)
    e1, e2 = _rows(data.batches(X, Y, 4, seed=rng)), _rows(data.batches(X, Y, 4, seed=rng))
    assert not np.array_equal(e1, e2)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(e1, _rows(data.batches(X, Y, 4, seed=rng)))
    np.testing.assert_array_equal(e2, _rows(data.batches(X, Y, 4, seed=rng)))


def test_no_shuffle_and_drop_last():
    np.testing.assert_array_equal(_rows(data.batches(X, Y, 10, shuffle=False)), Y)
    out = list(data.batches(X, Y, 10, shuffle=False, drop_last=True))
    assert [len(yb) for _, yb in out] == [10, 10]
    assert list(data.batches(X, Y, 50, drop_last=True)) == []
    assert [len(b) for b in data.index_batches(7, 50)] == [7]


@pytest.mark.parametrize("call, message", [
    (lambda: list(data.batches(X, Y[:5], 4)), "X has 23 rows but Y has 5"),
    (lambda: list(data.batches(X, Y, 0)), "batch_size must be a positive int"),
    (lambda: list(data.batches(X[:0], Y[:0], 4)), "X and Y are empty"),
    (lambda: list(data.batches(X, Y, 4, seed=-1)), "seed must be"),
    (lambda: data.train_test_split(X, Y, test_size=1.5), "test_size must be a fraction"),
    (lambda: data.train_test_split(X, Y, test_size=23), "both must be non-empty"),
    (lambda: data.train_test_split(X, Y.reshape(23, 1), 0.2, stratify=True), "stratify needs 1-d labels"),
])
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_train_test_split_partitions_deterministically():
    Xtr, Xte, Ytr, Yte = data.train_test_split(X, Y, test_size=0.25, seed=0)
    assert len(Yte) == 6 and len(Ytr) == 17                 # ceil(0.25 * 23)
    assert sorted(np.concatenate([Ytr, Yte])) == list(range(23))
    np.testing.assert_array_equal(Xte[:, 0], 2 * Yte)
    again = data.train_test_split(X, Y, test_size=0.25, seed=0)
    np.testing.assert_array_equal(again[3], Yte)
    assert len(data.train_test_split(X, Y, test_size=5)[1]) == 5


def test_stratified_split_keeps_class_shares():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    feats = np.arange(100)[:, None]
    _, Xte, _, Yte = data.train_test_split(feats, labels, test_size=0.2, seed=4, stratify=True)
    assert np.bincount(Yte).tolist() == [10, 6, 4]
    np.testing.assert_array_equal(labels[Xte[:, 0]], Yte)

"""Reference semantics every target keeps: the places where the NumPy
reference, the compiled loops and calculus could each give a different
answer, with the answer bpc picks.

* log(softmax(z)) is built as log_softmax(z), so its gradient is that of
  the stable form, also where softmax underflows to 0.
* The gradient of max is split evenly among tied maxima; maximum and
  minimum split it between a and b on a tie.
* d/db a**b is 0 where a == 0; d/da a**b is 0 where b == 0.
* Sums of bools count (int64, as sums of int32 are); means of bools are
  float64.
* Float32 sums and means accumulate in float64 on every target.
* sum over a 0-length axis is 0 and mean is NaN; max and argmax over one
  are a ShapeError when the graph is built.

Each compiled function below combines several checks, because compiling
one costs seconds; gradients are compared with central differences of the
same compiled function, in float64.
"""
import numpy as np
import pytest

import bpc
from bpc.graph.traverse import topo_sort


def op_names(root):
    return [n.op.name for n in topo_sort([root]) if n.op is not None]


def central_difference(fn, values, index, cost_at, direction, eps=1e-6):
    """(cost(x + eps d) - cost(x - eps d)) / 2 eps for input `index` moved
    along `direction`, where cost is output `cost_at` of the compiled `fn`."""
    def cost(sign):
        moved = list(values)
        moved[index] = values[index] + sign * eps * direction
        return float(fn(*moved)[cost_at])
    return (cost(1.0) - cost(-1.0)) / (2 * eps)


def assert_matches_central_differences(fn, values, index, cost_at, grad, elements=None, **kw):
    """Every listed element (all by default) of `grad` against a central
    difference along that element alone."""
    flat = grad.reshape(-1)
    for k in range(flat.size) if elements is None else elements:
        e = np.zeros(flat.size)
        e[k] = 1.0
        numeric = central_difference(fn, values, index, cost_at, e.reshape(grad.shape), **kw)
        np.testing.assert_allclose(flat[k], numeric, rtol=1e-6, atol=1e-8,
                                   err_msg=f"input {index}, element {k}")


# ----- log(softmax) is log_softmax -------------------------------------------------------

GAP = 200.0   # float32 exp underflows to 0 below about -104


def test_log_of_softmax_is_built_as_log_softmax():
    """No division is left to differentiate: the node is z - log(sum(exp(z)))."""
    z = bpc.input("z", (None, 4))
    names = op_names(bpc.log(bpc.softmax(z)))
    assert "div" not in names and names.count("log") == 1 and names.count("exp") == 1, names
    assert bpc.log(bpc.exp(z)) is z


def test_log_softmax_gradients_stay_finite_with_a_large_logit_gap(target):
    """float32, a logit gap of 200: loss and every gradient of
    -sum(log(softmax(z)) * onehot) are finite and equal those of log_softmax."""
    x = bpc.input("x", (None, 4))
    y = bpc.input("y", (None,), dtype="int64")
    b = bpc.param("b", np.zeros(4, np.float32))
    s = bpc.param("s", np.ones((), np.float32))
    z = x * s + b
    onehot = bpc.one_hot(y, 4)
    loss = -bpc.sum(bpc.log(bpc.softmax(z)) * onehot)
    stable = -bpc.sum(bpc.log_softmax(z) * onehot)
    grads = bpc.grad(loss, [x, b, s])
    stable_grads = bpc.grad(stable, [x, b, s])
    f = bpc.function([x, y], [loss, stable, *grads, *stable_grads], target=target)
    xv = np.array([[GAP, 0.0, 0.0, 0.0], [0.0, GAP, -1.0, 2.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    yv = np.array([1, 1, 3])
    got = f(xv, yv)
    for name, value in zip(["loss", "dx", "db", "ds"], [got[0], *got[2:5]]):
        assert value.dtype == np.float32 and np.all(np.isfinite(value)), (name, value)
    for a, b_ in zip(got[:1] + got[2:5], got[1:2] + got[5:8]):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-6)
    # Row 0 is the one that underflows: its loss is the gap itself.
    assert float(got[0]) > GAP


def test_log_of_softmax_passes_check_grad_in_float64():
    """A gap of 1000 underflows even float64; the gradient still checks."""
    x = bpc.input("x", (None, 3))
    y = bpc.input("y", (None,), dtype="int64")
    W = bpc.param("W", np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, -1.0, 1.0]]))
    loss = -bpc.sum(bpc.log(bpc.softmax(x @ W)) * bpc.one_hot(y, 3))
    xv = np.array([[1000.0, 0.0, 0.0], [0.1, 0.2, -0.3]])
    report = bpc.check_grad(loss, [W, x], {x: xv, y: np.array([2, 0])})
    assert report.ok, report


# ----- ties --------------------------------------------------------------------------

# Rows with two-way ties (central differences then agree exactly: moving one
# tied element up raises the maximum by eps, moving it down leaves the other).
TIES2 = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, -1.0, 2.0, 0.5], [5.0, 1.0, 0.0, -1.0]])
# Rows with three- and four-way ties: each tied element gets 1/k, and the
# tied elements together get the whole gradient.
TIES3 = np.array([[2.0, 2.0, 2.0, 0.0], [-1.0, -1.0, -1.0, -1.0], [0.0, 1.0, 1.0, 1.0]])
A = np.array([[1.0, 2.0, -0.5], [0.0, 4.0, 3.0], [7.0, -2.0, 1.5]])
B = np.array([[1.0, 0.0, -0.5], [0.5, 4.0, 2.0], [7.0, -3.0, 1.5]])   # ties with A in 5 places


def test_ties_share_the_gradient_evenly(target):
    """max gives each of k tied maxima 1/k of the gradient (as JAX does);
    maximum and minimum give a and b one half each on a tie (as JAX and
    PyTorch do), so clip gives 1/2 exactly at a bound."""
    x2 = bpc.input("x2", (3, 4), dtype="float64")
    x3 = bpc.input("x3", (3, 4), dtype="float64")
    a = bpc.input("a", (3, 3), dtype="float64")
    b = bpc.input("b", (3, 3), dtype="float64")
    w = np.array([1.0, -2.0, 0.5])
    outs = [bpc.max(x2, axis=1), bpc.max(x2, axis=0, keepdims=True), bpc.max(x3, axis=1),
            bpc.maximum(a, b), bpc.minimum(a, b), bpc.clip(a, -0.5, 4.0)]
    cost = (bpc.sum(outs[0] * w) + bpc.sum(outs[1] * np.arange(1.0, 5.0)) + bpc.sum(outs[2] * w)
            + bpc.sum(outs[3] * 1.5) + bpc.sum(outs[4] * w) + bpc.sum(outs[5] * 0.25))
    grads = bpc.grad(cost, [x2, x3, a, b])
    f = bpc.function([x2, x3, a, b], [*outs, cost, *grads], target=target)
    values = [TIES2, TIES3, A, B]
    got = f(*values)
    for o, want in zip(got, [TIES2.max(1), TIES2.max(0, keepdims=True), TIES3.max(1), np.maximum(A, B),
                             np.minimum(A, B), np.clip(A, -0.5, 4.0)]):
        np.testing.assert_array_equal(o, want)
    g2, g3, ga, gb = got[7:]
    # Two-way ties: one half each (plus, in g2, the column maxima's weights 1..4).
    np.testing.assert_allclose(g2, [[0.0, 0.5 + 2.0, 0.5 + 3.0, 0.0], [-1.0, 0.0, -1.0, 4.0], [0.5 + 1.0, 0.0, 0.0, 0.0]])
    tie, above, below = A == B, A > B, A < B
    np.testing.assert_allclose(ga, 1.5 * (above + 0.5 * tie) + w * (below + 0.5 * tie)
                               + 0.25 * (((A > -0.5) & (A < 4.0)) + 0.5 * ((A == -0.5) | (A == 4.0))))
    np.testing.assert_allclose(gb, 1.5 * (below + 0.5 * tie) + w * (above + 0.5 * tie))
    # ... which is what central differences say.
    for i in (0, 2, 3):
        assert_matches_central_differences(f, values, i, 6, got[7 + i])
    # k-way ties: w/k each, summing to w (a central difference along all of them).
    np.testing.assert_allclose(g3, [[1 / 3, 1 / 3, 1 / 3, 0.0], [-0.5] * 4, [0.0, 0.5 / 3, 0.5 / 3, 0.5 / 3]])
    for row in range(3):
        tied = (TIES3 == TIES3.max(1, keepdims=True)) & (np.arange(3)[:, None] == row)
        np.testing.assert_allclose(central_difference(f, values, 1, 6, tied.astype(float)), w[row], rtol=1e-6)


# ----- powers at zero ------------------------------------------------------------------

P = np.array([[0.0, 0.0, 0.0, 2.0, 0.5, 0.0]])
E = np.array([[2.0, 0.5, 0.0, 3.0, 1.5, 1.0]])


def test_power_gradients_at_a_zero_base_and_exponent(target):
    """d/db a**b = a**b log(a) is 0 at a == 0 (a**b is flat there in b for
    b > 0), not 0 * log(0) = NaN; d/da a**b is 0 at b == 0, not 0 * 0**-1.
    The forward values are NumPy's on every target (0**-1 = inf, a
    negative base with a fractional exponent NaN)."""
    p = bpc.input("p", (None, 6), dtype="float64")
    e = bpc.input("e", (None, 6), dtype="float64")
    weights = np.arange(1.0, 7.0)
    power = p ** e
    cost = bpc.sum(power * weights)
    f = bpc.function([p, e], [power, p ** -1.0, (p - 1.0) ** 0.5, cost, *bpc.grad(cost, [p, e])],
                     target=target)
    with np.errstate(divide="ignore", invalid="ignore"):
        got = f(P, E)
        for o, want in zip(got, [P ** E, P ** -1.0, (P - 1.0) ** 0.5]):
            np.testing.assert_array_equal(o, want)
    dp, de = got[4:]
    np.testing.assert_allclose(dp, weights * [[0.0, np.inf, 0.0, 12.0, 1.5 * 0.5 ** 0.5, 1.0]])
    np.testing.assert_allclose(de, weights * [[0.0, 0.0, 0.0, 8.0 * np.log(2.0), 0.5 ** 1.5 * np.log(0.5), 0.0]])
    # Central differences agree wherever they are defined: not at 0**0 in b
    # (0**b jumps from 1 to 0 there), not at a == 0 in a (a negative base).
    assert_matches_central_differences(f, [P, E], 1, 3, de, elements=[0, 1, 3, 4, 5])
    assert_matches_central_differences(f, [P, E], 0, 3, dp, elements=[3, 4])


# ----- reductions: counting, accumulation, empty axes -------------------------------------

MASK = np.array([[True, False, True], [False, False, False], [True, True, True], [True, False, False]])
INTS = np.array([[2**30, 2**30, 3], [2**30, -1, 0], [5, 6, 7], [1, 1, 1]], np.int32)
BIG = np.array([[3e38, 3e38, 3e38, 3e38], [1e8, 1.0, 1.0, -1e8], [0.5, 0.25, 0.0, 1.0],
                [-3e38, -3e38, 1.0, 2.0]], np.float32)


def test_sums_count_and_float32_accumulates_in_float64(target):
    """A sum of bools is an int64 count and a mean of bools a float64
    fraction; an int32 sum is int64 (no wrap-around); comparisons give float
    masks, whose sum is a count in that float dtype. Float32 sums and means
    accumulate in float64, so a mean of values near the float32 limit is
    finite and 1e8 + 1 + 1 - 1e8 is 2, on the interpreter as compiled."""
    m = bpc.input("m", (None, 3), dtype="bool")
    k = bpc.input("k", (None, 3), dtype="int32")
    h = bpc.input("h", (None, 4), dtype="float32")
    outs = [bpc.sum(m), bpc.sum(m, axis=1), bpc.sum(m, axis=0, keepdims=True), bpc.mean(m), bpc.mean(m, axis=0),
            bpc.sum(k), bpc.sum(k, axis=1), bpc.sum(bpc.greater(h, 0.0)),
            bpc.mean(h), bpc.mean(h, axis=1), bpc.sum(h, axis=1), bpc.mean(h, axis=0)]
    f = bpc.function([m, k, h], outs, target=target)
    with np.errstate(over="ignore"):   # one row's float32 sum is inf, as it should be
        got = f(MASK, INTS, BIG)
    counts = MASK.sum(1)
    wide = BIG.astype(np.float64)
    want = [(6, np.int64), (counts, np.int64), (MASK.sum(0, keepdims=True), np.int64), (0.5, np.float64),
            (MASK.mean(0), np.float64), (INTS.astype(np.int64).sum(), np.int64),
            (INTS.astype(np.int64).sum(1), np.int64), ((BIG > 0).sum(), np.float32),
            (wide.mean(), np.float32), (wide.mean(1), np.float32), (wide.sum(1), np.float32),
            (wide.mean(0), np.float32)]
    for i, (o, (value, dtype)) in enumerate(zip(got, want)):
        assert o.dtype == dtype, (i, o.dtype, dtype)
        with np.errstate(over="ignore"):
            expected = np.asarray(value).astype(dtype)
        np.testing.assert_array_equal(o, expected, err_msg=f"output {i}")
    assert np.isfinite(got[9][0]) and got[10][0] == np.inf and got[10][1] == 2.0


def test_reductions_over_an_empty_axis(target):
    """sum over a 0-length axis is 0 and mean NaN (NumPy's values); a max
    over the other (nonempty) axis of an empty tensor is empty."""
    x = bpc.input("x", (None, 0), dtype="float64")
    outs = [bpc.sum(x, axis=1), bpc.mean(x, axis=1), bpc.sum(x), bpc.mean(x), bpc.sum(x, axis=0),
            bpc.max(x, axis=0), bpc.mean(x, axis=0, keepdims=True)]
    got = bpc.function([x], outs, target=target)(np.zeros((3, 0)))
    for o, want in zip(got, [np.zeros(3), np.full(3, np.nan), 0.0, np.nan, np.zeros(0), np.zeros(0),
                             np.zeros((1, 0))]):
        np.testing.assert_array_equal(o, want)
        assert o.shape == np.shape(want)


def test_max_over_an_empty_axis_is_refused_when_built():
    """The maximum of nothing has no value (NumPy raises, a -inf accumulator
    would invent one): max and argmax refuse a reduced axis of length 0."""
    x = bpc.input("x", (None, 0, 3))
    for build in (lambda: bpc.max(x, axis=1), lambda: bpc.max(x), lambda: bpc.max(x, axis=(0, 1), keepdims=True),
                  lambda: bpc.argmax(x, axis=1), lambda: bpc.max(bpc.constant(np.zeros(0)))):
        with pytest.raises(bpc.ShapeError, match=r"max: axis \d has length 0.*test_semantics.py:"):
            build()
    assert bpc.max(x, axis=2).shape == (None, 0)

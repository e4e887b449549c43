"""Every op on every target: forward against an independent NumPy expression,
gradients against central finite differences in float64 (broadcast operands,
scalar operands and Python scalars included), float32 graphs against the
float64 results, and zero gradients through non-differentiable ops.

Each `OpCase` compiles ONE function (see `conftest.check_op`); cases combine
several variants of the same op (broadcast patterns, axes) to keep the
number of compiled functions small.
"""
import operator

import numpy as np
import pytest

import bpc
from bpc.ops import uniform_hash
from conftest import Arg, OpCase, check_op, check_float32, far_apart, BATCH


# ----- NumPy references written independently of bpc ---------------------------------

def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_log_softmax(x, axis=-1):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def np_softmax(x, axis=-1):
    return np.exp(np_log_softmax(x, axis))


def np_one_hot(labels, depth):
    return (labels[..., None] == np.arange(depth)).astype(np.float64)


# ----- binary elementwise ops, every broadcast pattern in one function -----------------

BROADCAST_ARGS = ("a", "b", "v", "col", "row", "c", "s")


def binary_case(name, fn, np_fn, left="normal", right="normal", left_scalar=0.6, right_scalar=1.7,
                no_ties=False):
    """op(a, b) for same shapes, (N,6)+(6,), (N,1)+(1,6), (3,1)+(1,6), a 0-d
    operand, and Python scalars on either side."""
    args = [Arg("a", (None, 6), left), Arg("b", (None, 6), right), Arg("v", (6,), right),
            Arg("col", (None, 1), left), Arg("row", (1, 6), right), Arg("c", (3, 1), left),
            Arg("s", (), right)]

    def pairs(a, b, v, col, row, c, s):
        return [(a, b), (a, v), (col, row), (c, row), (a, s), (a, right_scalar), (left_scalar, v)]

    return OpCase(name, lambda *t: [fn(x, y) for x, y in pairs(*t)], args,
                  lambda *arrays: [np_fn(x, y) for x, y in pairs(*arrays)],
                  valid=(lambda *arrays: far_apart(*pairs(*arrays))) if no_ties else None)


BINARY = [
    binary_case("add", operator.add, np.add),
    binary_case("sub", operator.sub, np.subtract),
    binary_case("mul", operator.mul, np.multiply),
    binary_case("div", operator.truediv, np.divide, right="nonzero"),
    binary_case("pow", operator.pow, np.power, left="positive"),
    binary_case("maximum", bpc.maximum, np.maximum, no_ties=True),
    binary_case("minimum", bpc.minimum, np.minimum, no_ties=True),
]

MIXED_CONSTANTS = OpCase(
    "mixed_constants",
    lambda a, m: [np.linspace(-1.0, 1.0, 6) + a, a * np.linspace(0.5, 2.0, 6), np.full((3, 1), 0.5) - m,
                  a + 2, np.float64(1.5) * a, 3 / m, bpc.add(a, 1), bpc.sub(1, a), bpc.mul(a, 2), bpc.div(2, m),
                  bpc.pow(m, 2.5), bpc.neg(a)],
    [Arg("a", (None, 6)), Arg("m", (3, 6), "positive")],
    lambda a, m: [np.linspace(-1.0, 1.0, 6) + a, a * np.linspace(0.5, 2.0, 6), np.full((3, 1), 0.5) - m,
                  a + 2, 1.5 * a, 3 / m, a + 1, 1 - a, a * 2, 2 / m, m ** 2.5, -a])

POW_CONSTANT_EXPONENTS = OpCase(
    "pow_constant_exponents",
    lambda x, p: [x ** 2, x ** 3, x ** 1, p ** 0.5, p ** -1.5, 2.0 ** x],
    [Arg("x", (None, 6)), Arg("p", (None, 6), "positive")],
    lambda x, p: [x ** 2, x ** 3, x, np.sqrt(p), p ** -1.5, 2.0 ** x])


# ----- unary elementwise ops -------------------------------------------------------------

def unary_case(name, fn, np_fn, values="normal"):
    """op on a batch of rows and on a 3-d tensor."""
    return OpCase(name, lambda x, y: [fn(x), fn(y)], [Arg("x", (None, 7), values), Arg("y", (2, 3, 5), values)],
                  lambda x, y: [np_fn(x), np_fn(y)])


UNARY = [
    unary_case("exp", bpc.exp, np.exp),
    unary_case("log", bpc.log, np.log, "positive"),
    unary_case("sqrt", bpc.sqrt, np.sqrt, "positive"),
    unary_case("abs", bpc.abs, np.abs, "nonzero"),
    unary_case("abs_builtin", abs, np.abs, "nonzero"),
    unary_case("neg", operator.neg, np.negative),
    unary_case("square", bpc.square, lambda x: x * x),
    unary_case("tanh", bpc.tanh, lambda x: (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1)),
    unary_case("sigmoid", bpc.sigmoid, np_sigmoid, "wide"),
    unary_case("relu", bpc.relu, lambda x: np.where(x > 0, x, 0.0), "nonzero"),
    unary_case("softplus", bpc.softplus, lambda x: np.log(1.0 + np.exp(x)), "wide"),
]

LEAKY_RELU = OpCase(
    "leaky_relu",
    lambda x: [bpc.leaky_relu(x), bpc.leaky_relu(x, alpha=0.2)],
    [Arg("x", (None, 7), "nonzero")],
    lambda x: [np.where(x > 0, x, 0.01 * x), np.where(x > 0, x, 0.2 * x)])

CLIP = OpCase(
    "clip",
    lambda x, lo, hi: [bpc.clip(x, -0.5, 0.8), bpc.clip(x, lo, hi)],
    [Arg("x", (None, 6), "wide"), Arg("lo", (6,), lambda r, s: r.uniform(-2.0, -0.5, s)),
     Arg("hi", (), lambda r, s: r.uniform(0.5, 2.0, s))],
    lambda x, lo, hi: [np.minimum(np.maximum(x, -0.5), 0.8), np.minimum(np.maximum(x, lo), hi)],
    valid=lambda x, lo, hi: far_apart((x, -0.5), (x, 0.8), (x, lo), (x, hi)))

WHERE = OpCase(
    "where",
    lambda x, a, b, v: [bpc.where(x > 0.2, a, b), bpc.where(x < v, a, v), bpc.where(bpc.greater(x, 0.2), a, 0.5),
                        bpc.where(bpc.less(x, 0.2), -1.0, v)],
    [Arg("x", (None, 6)), Arg("a", (None, 6)), Arg("b", (None, 6)), Arg("v", (6,))],
    lambda x, a, b, v: [np.where(x > 0.2, a, b), np.where(x < v, a, v), np.where(x > 0.2, a, 0.5),
                        np.where(x < 0.2, -1.0, v)],
    valid=lambda x, a, b, v: far_apart((x, 0.2), (x, v)))


# ----- reductions, shape ops, matrix products ----------------------------------------------

AXES = [dict(axis=None), dict(axis=1), dict(axis=-1, keepdims=True), dict(axis=(0, 2)),
        dict(axis=(0, 1), keepdims=True), dict(axis=0), dict(axis=None, keepdims=True)]


def reduction_case(name, fn, np_fn, valid=None):
    """Every axis form (None, int, negative, tuple, the batch axis) with and
    without keepdims on a 3-d batch, plus a 1-d and a 0-d operand."""
    return OpCase(name,
                  lambda x, v, s: [fn(x, **kw) for kw in AXES] + [fn(v), fn(v, axis=0, keepdims=True), fn(s)],
                  [Arg("x", (None, 3, 6)), Arg("v", (7,)), Arg("s", ())],
                  lambda x, v, s: [np_fn(x, **kw) for kw in AXES]
                  + [np_fn(v), np_fn(v, axis=0, keepdims=True), np_fn(s)],
                  valid=valid)


def all_distinct(*arrays, margin=1e-5):
    """No ties anywhere (so the maximum is unique, away from the kink)."""
    return all(np.min(np.diff(np.sort(a.reshape(-1)))) > margin for a in arrays if a.size > 1)


REDUCTIONS = [
    reduction_case("sum", bpc.sum, np.sum),
    reduction_case("mean", bpc.mean, np.mean),
    reduction_case("max", bpc.max, np.max, valid=all_distinct),
]

METHOD_REDUCTIONS = OpCase(
    "reduction_methods",
    lambda x: [x.sum(axis=1), x.mean(axis=0, keepdims=True), x.max(axis=-1)],
    [Arg("x", (None, 6))],
    lambda x: [x.sum(axis=1), x.mean(axis=0, keepdims=True), x.max(axis=-1)],
    valid=all_distinct)

TRANSPOSE = OpCase(
    "transpose",
    lambda x, y: [x.T, bpc.transpose(x), bpc.transpose(y, (2, 0, 1)), bpc.transpose(y), bpc.transpose(y, (0, -1, 1))],
    [Arg("x", (None, 6)), Arg("y", (None, 3, 7))],
    lambda x, y: [x.T, x.T, np.transpose(y, (2, 0, 1)), np.transpose(y), np.transpose(y, (0, 2, 1))])

RESHAPE = OpCase(
    "reshape",
    lambda x, m, y: [bpc.reshape(x, (None, 2, 3)), bpc.reshape(x, (None, 3, -1)), bpc.reshape(m, (5, 3)),
                     bpc.reshape(m, -1), m.reshape(15, 1), bpc.reshape(y, (None, 21)), bpc.reshape(y, (None, 7, 3))],
    [Arg("x", (None, 6)), Arg("m", (3, 5)), Arg("y", (None, 3, 7))],
    lambda x, m, y: [x.reshape(BATCH, 2, 3), x.reshape(BATCH, 3, 2), m.reshape(5, 3), m.reshape(-1),
                     m.reshape(15, 1), y.reshape(BATCH, 21), y.reshape(BATCH, 7, 3)])

BROADCAST_TO = OpCase(
    "broadcast_to",
    lambda v, c, s, r: [bpc.broadcast_to(v, (3, 6)), bpc.broadcast_to(v, (None, 6)), bpc.broadcast_to(c, (3, 6)),
                        bpc.broadcast_to(c, (2, 3, 5)), bpc.broadcast_to(s, (2, 3)), bpc.broadcast_to(r, (None, 6))],
    [Arg("v", (6,)), Arg("c", (3, 1)), Arg("s", ()), Arg("r", (1, 6))],
    lambda v, c, s, r: [np.broadcast_to(v, (3, 6)), np.broadcast_to(v, (BATCH, 6)), np.broadcast_to(c, (3, 6)),
                        np.broadcast_to(c, (2, 3, 5)), np.broadcast_to(s, (2, 3)), np.broadcast_to(r, (BATCH, 6))])

MATMUL = OpCase(
    "matmul",
    lambda a, w, v, m: [a @ w, a @ v.T, m @ a.T, a.T @ a, bpc.matmul(a, np.linspace(-1.0, 1.0, 18).reshape(6, 3)),
                        (a @ w).T @ a],
    [Arg("a", (None, 6)), Arg("w", (6, 3)), Arg("v", (3, 6)), Arg("m", (7, 6))],
    lambda a, w, v, m: [a @ w, a @ v.T, m @ a.T, a.T @ a, a @ np.linspace(-1.0, 1.0, 18).reshape(6, 3),
                        (a @ w).T @ a])

BATCHED_MATMUL = OpCase(
    "batched_matmul",
    lambda x, w, y, c, d, v: [x @ w, x @ y, c @ d, x @ v, v @ w, v @ y, x.mT @ x],
    [Arg("x", (None, 4, 5)), Arg("w", (5, 3)), Arg("y", (None, 5, 2)), Arg("c", (2, 1, 4, 5)),
     Arg("d", (3, 5, 2)), Arg("v", (5,))],
    lambda x, w, y, c, d, v: [x @ w, x @ y, c @ d, x @ v, v @ w, v @ y, np.swapaxes(x, 1, 2) @ x])

# ----- indexing: slices, concat/stack/split, take ---------------------------------------

SLICING = OpCase(
    "slicing",
    lambda x, m: [x[:, 1:4], x[..., 0], x[:, ::-2, 1], x[:, None, -1], x[:, :, ::3], x[:, 4:1:-1, 2:],
                  m[1], m[-1:, ::2], m[::-1], m[:, 5:]],
    [Arg("x", (None, 5, 6)), Arg("m", (3, 7))],
    lambda x, m: [x[:, 1:4], x[..., 0], x[:, ::-2, 1], x[:, None, -1], x[:, :, ::3], x[:, 4:1:-1, 2:],
                  m[1], m[-1:, ::2], m[::-1], m[:, 5:]])

JOINING = OpCase(
    "concat_stack_split",
    lambda x, m, v: [bpc.concat([x, x[:, :2] * 2.0, x], axis=1), bpc.concat([m, np.ones((2, 4))], axis=0),
                     bpc.stack([v, v * v, 2.0 * v], axis=0), bpc.stack([x, x], axis=-1), *bpc.split(m, [1, 2], 0),
                     *bpc.split(x, 2, axis=1)],
    [Arg("x", (None, 4)), Arg("m", (3, 4)), Arg("v", (5,))],
    lambda x, m, v: [np.concatenate([x, x[:, :2] * 2.0, x], axis=1), np.concatenate([m, np.ones((2, 4))], axis=0),
                     np.stack([v, v * v, 2.0 * v], axis=0), np.stack([x, x], axis=-1), *np.split(m, [1, 2], 0),
                     *np.split(x, 2, axis=1)])

TAKE = OpCase(
    "take",
    lambda t, c, ids, row: [bpc.take(t, ids), bpc.take(c, row, axis=1), bpc.take(t, np.array([[4, 4], [0, 4]]))],
    [Arg("t", (5, 3)), Arg("c", (2, 5, 3)), Arg("ids", (None, 4), "labels:5", "int64"),
     Arg("row", (6,), "labels:5", "int64")],
    lambda t, c, ids, row: [t[ids], c[:, row], t[np.array([[4, 4], [0, 4]])]])

# ----- neural-network ops and losses ----------------------------------------------------------

SOFTMAX = OpCase(
    "softmax",
    lambda x, y: [bpc.softmax(x), bpc.softmax(x, axis=0), bpc.softmax(y, axis=1), bpc.softmax(x * 3.0 + 800.0)],
    [Arg("x", (None, 7)), Arg("y", (None, 3, 5))],
    lambda x, y: [np_softmax(x), np_softmax(x, 0), np_softmax(y, 1), np_softmax(x * 3.0 + 800.0)])

LOG_SOFTMAX = OpCase(
    "log_softmax",
    lambda x, y: [bpc.log_softmax(x), bpc.log_softmax(x, axis=0), bpc.log_softmax(y, axis=1),
                  bpc.log_softmax(x * 3.0 - 800.0)],
    [Arg("x", (None, 7)), Arg("y", (None, 3, 5))],
    lambda x, y: [np_log_softmax(x), np_log_softmax(x, 0), np_log_softmax(y, 1), np_log_softmax(x * 3.0 - 800.0)])


def np_cross_entropy(logits, targets):
    """Mean over all but the class axis of -sum(targets * log softmax)."""
    return -np.mean(np.sum(targets * np_log_softmax(logits), axis=-1))


SCE_LABELS = OpCase(
    "softmax_cross_entropy_labels",
    lambda x, y, x3, y3: [bpc.softmax_cross_entropy(x, y), bpc.softmax_cross_entropy(x3, y3)],
    [Arg("x", (None, 7)), Arg("y", (None,), "labels:7", "int64"),
     Arg("x3", (None, 3, 5)), Arg("y3", (None, 3), "labels:5", "int64")],
    lambda x, y, x3, y3: [np_cross_entropy(x, np_one_hot(y, 7)), np_cross_entropy(x3, np_one_hot(y3, 5))])

SCE_PROBS = OpCase(
    "softmax_cross_entropy_probs",
    lambda x, t: bpc.softmax_cross_entropy(x, t),
    [Arg("x", (None, 7)), Arg("t", (None, 7), "simplex")],
    lambda x, t: np_cross_entropy(x, t))

BCE = OpCase(
    "binary_cross_entropy_with_logits",
    lambda x, t: [bpc.binary_cross_entropy_with_logits(x, t), bpc.binary_cross_entropy_with_logits(x, 0.25)],
    [Arg("x", (None, 6), "wide"), Arg("t", (None, 6), "unit")],
    lambda x, t: [np.mean(-t * np.log(np_sigmoid(x)) - (1 - t) * np.log(1 - np_sigmoid(x))),
                  np.mean(-0.25 * np.log(np_sigmoid(x)) - 0.75 * np.log(1 - np_sigmoid(x)))])

MSE = OpCase(
    "mse",
    lambda p, t, v: [bpc.mse(p, t), bpc.mse(p, 0.5), bpc.mse(p, v)],
    [Arg("p", (None, 6)), Arg("t", (None, 6)), Arg("v", (6,))],
    lambda p, t, v: [np.mean((p - t) ** 2), np.mean((p - 0.5) ** 2), np.mean((p - v) ** 2)])


def _simplex_axis1(rng, shape):
    """Positive values summing to 1 along axis 1."""
    v = rng.uniform(0.2, 1.0, shape)
    return v / v.sum(axis=1, keepdims=True)


P_WITH_ZEROS = np.array([0.5, 0.0, 0.2, 0.3, 0.0, 0.0])   # broadcast over the batch


def np_kl(p, q, axis=-1):
    terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0)
    return np.mean(np.sum(terms, axis=axis))


KL_DIV = OpCase(
    "kl_div",
    lambda p, q, p3, q3: [bpc.kl_div(p, q), bpc.kl_div(bpc.constant(P_WITH_ZEROS, dtype=q.dtype), q),
                          bpc.kl_div(p3, q3, axis=1)],
    [Arg("p", (None, 6), "simplex"), Arg("q", (None, 6), "simplex"),
     Arg("p3", (None, 3, 5), _simplex_axis1), Arg("q3", (None, 3, 5), _simplex_axis1)],
    lambda p, q, p3, q3: [np_kl(p, q), np_kl(P_WITH_ZEROS, q), np_kl(p3, q3, axis=1)])


def expected_dropout(x, rate, seed, counter=0):
    """Dropout as specified: keep where the counter-based uniform number of
    (seed, counter, flat index) is >= rate, and scale by 1/(1 - rate)."""
    u = uniform_hash(np.int64(seed), np.int64(counter), np.arange(x.size, dtype=np.int64)).reshape(x.shape)
    return np.where(u >= rate, x / (1.0 - rate), 0.0)


DROPOUT = OpCase(
    "dropout",
    lambda x, y: [bpc.dropout(x, rate=0.3, seed=3), bpc.dropout(y), bpc.dropout(x, rate=0.3, training=False),
                  bpc.dropout(y, rate=0.0)],
    [Arg("x", (None, 7)), Arg("y", (6, 5))],
    lambda x, y: [expected_dropout(x, 0.3, 3), expected_dropout(y, 0.5, 0), x, y])

# Casting to float32 rounds: a linear function up to rounding, so a large
# finite-difference step is exact while a 1e-6 step would measure rounding.
CAST = OpCase(
    "cast",
    lambda x: [bpc.cast(x, "float32"), x.astype("float32") * 2.0, bpc.cast(bpc.cast(x, "float32"), "float64")],
    [Arg("x", (None, 6))],
    lambda x: [x.astype(np.float32), x.astype(np.float32) * np.float32(2.0), x.astype(np.float32).astype(np.float64)],
    eps=1e-2, rtol=1e-4, atol=1e-4, float32=False)

MLP = OpCase(
    "mlp_composite",
    lambda x, w1, b1, w2, y: bpc.softmax_cross_entropy(bpc.sigmoid(bpc.tanh(x @ w1 + b1) @ w2), y),
    [Arg("x", (None, 6)), Arg("w1", (6, 7)), Arg("b1", (7,)), Arg("w2", (7, 3)),
     Arg("y", (None,), "labels:3", "int64")],
    lambda x, w1, b1, w2, y: np_cross_entropy(np_sigmoid(np.tanh(x @ w1 + b1) @ w2), np_one_hot(y, 3)))


# ----- non-differentiable ops: forward only, gradient exactly zero -----------------------------

COMPARISONS = OpCase(
    "comparisons",
    lambda a, v, k: [a < v, a <= v, a > 0.3, a >= v, bpc.equal(a, a), bpc.not_equal(a, v), bpc.less(0.3, v),
                     bpc.greater_equal(v, a), bpc.equal(k, 1), k != 2],
    [Arg("a", (None, 6)), Arg("v", (6,)), Arg("k", (None, 6), "labels:3", "int64")],
    lambda a, v, k: [np.less(a, v) * 1.0, np.less_equal(a, v) * 1.0, np.greater(a, 0.3) * 1.0,
                     np.greater_equal(a, v) * 1.0, np.ones_like(a), np.not_equal(a, v) * 1.0, np.less(0.3, v) * 1.0,
                     np.greater_equal(v, a) * 1.0, (k == 1).astype(np.float32), (k != 2).astype(np.float32)],
    valid=lambda a, v, k: far_apart((a, v), (a, 0.3), (v, 0.3)), zero_grad=True)


def _frac_away_from_integers(x, margin=1e-3):
    frac = np.abs(x - np.round(x))
    return np.min(frac) > margin


NON_DIFFERENTIABLE = OpCase(
    "argmax_sign_one_hot_int_cast",
    lambda x, labels: [bpc.argmax(x), bpc.argmax(x, axis=0, keepdims=True), bpc.sign(x), bpc.one_hot(labels, 7),
                       bpc.one_hot(bpc.argmax(x), 7) * 2.0, bpc.cast(x * 10.0, "int64"),
                       bpc.cast(bpc.cast(x * 10.0, "int32"), x.dtype)],
    [Arg("x", (None, 7), "nonzero"), Arg("labels", (None,), "labels:7", "int64")],
    lambda x, labels: [np.argmax(x, axis=-1), np.argmax(x, axis=0, keepdims=True), np.sign(x),
                       np_one_hot(labels, 7), np_one_hot(np.argmax(x, axis=-1), 7) * 2.0,
                       (x * 10.0).astype(np.int64), (x * 10.0).astype(np.int32).astype(np.float64)],
    valid=lambda x, labels: all_distinct(x) and _frac_away_from_integers(x * 10.0), zero_grad=True)

# The finite differences of stop_gradient(x) are those of x: its gradient is
# zero by definition (a value treated as a constant), not by calculus.
STOP_GRADIENT = OpCase(
    "stop_gradient",
    lambda x: [bpc.stop_gradient(x), bpc.stop_gradient(x * 2.0) + 1.0],
    [Arg("x", (None, 6))],
    lambda x: [x, x * 2.0 + 1.0],
    zero_grad=True, fd=False)


DIFFERENTIABLE = (BINARY + [MIXED_CONSTANTS, POW_CONSTANT_EXPONENTS] + UNARY + [LEAKY_RELU, CLIP, WHERE]
                  + REDUCTIONS + [METHOD_REDUCTIONS, TRANSPOSE, RESHAPE, BROADCAST_TO, MATMUL, BATCHED_MATMUL, SLICING, JOINING, TAKE]
                  + [SOFTMAX, LOG_SOFTMAX, SCE_LABELS, SCE_PROBS, BCE, MSE, KL_DIV, DROPOUT, CAST, MLP])
NON_DIFF = [COMPARISONS, NON_DIFFERENTIABLE, STOP_GRADIENT]
ALL_CASES = DIFFERENTIABLE + NON_DIFF


def _ids(cases):
    return [c.id for c in cases]


def test_case_ids_are_unique():
    """Each case compiles one function; its id names the test and seeds its inputs."""
    assert len(set(_ids(ALL_CASES))) == len(ALL_CASES)


@pytest.mark.parametrize("case", DIFFERENTIABLE, ids=_ids(DIFFERENTIABLE))
def test_forward_and_gradient_float64(case, target):
    """Forward equals the NumPy expression; gradients equal central finite
    differences of the same compiled function."""
    check_op(case, target)


@pytest.mark.parametrize("case", NON_DIFF, ids=_ids(NON_DIFF))
def test_non_differentiable_forward_and_zero_gradient(case, target):
    """Masks, indices, signs, one-hot rows and stop_gradient: right values,
    and exactly zero gradient (also what finite differences say, except for
    stop_gradient, whose zero gradient is its definition)."""
    check_op(case, target)


# One compiled function per case: the compile time of one function grows
# faster than its size (all cases in one function took minutes; six cases
# 70 s; the same six one by one 22 s).
FLOAT32_CASES = (BINARY + [MIXED_CONSTANTS, POW_CONSTANT_EXPONENTS] + UNARY + [LEAKY_RELU, CLIP, WHERE]
                 + REDUCTIONS + [METHOD_REDUCTIONS, TRANSPOSE, RESHAPE, BROADCAST_TO, MATMUL, BATCHED_MATMUL, SLICING, JOINING, TAKE]
                 + [SOFTMAX, LOG_SOFTMAX, SCE_LABELS, SCE_PROBS, BCE, MSE, KL_DIV, DROPOUT, MLP] + NON_DIFF)


def test_float32_cases_cover_every_case():
    """No case silently escapes the float32 comparison (cast opts out: it
    converts to float32 by design)."""
    assert {c.id for c in FLOAT32_CASES} == {c.id for c in ALL_CASES if c.float32}
    assert {c.id for c in ALL_CASES if not c.float32} == {"cast"}


@pytest.mark.parametrize("case", FLOAT32_CASES, ids=lambda c: c.id)
def test_float32_agrees_with_float64(case, target):
    """The same graph built from float32 inputs stays float32 and agrees with
    the float64 results (forward and gradients) within float32 tolerances."""
    check_float32([case], target)


# ----- behaviour beyond one forward/backward pass ---------------------------------------------

def test_stop_gradient_blocks_only_its_own_path(target):
    """d/dx sum(stop_gradient(x) * x * w) = stop_gradient(x) * w: the stopped
    factor is a constant, the other factor still carries the gradient."""
    x = bpc.input("x", (None, 6), dtype="float64")
    w = bpc.input("w", (None, 6), dtype="float64")
    g = bpc.grad(bpc.sum(bpc.stop_gradient(x) * x * w), x)
    f = bpc.function([x, w], g, target=target)
    rng = np.random.default_rng(1)
    xv, wv = rng.normal(size=(BATCH, 6)), rng.normal(size=(BATCH, 6))
    np.testing.assert_allclose(f(xv, wv), xv * wv, rtol=1e-12)


def test_dropout_draws_a_new_mask_each_call_and_keeps_the_rate(target):
    """The counter advances after every call (so masks differ from call to
    call, each as specified by the counter-based generator), about `rate`
    of the elements are dropped, and kept ones are scaled by 1/(1-rate)."""
    x = bpc.input("x", (None, 60), dtype="float64")
    f = bpc.function([x], bpc.dropout(x, rate=0.3, seed=11), target=target)
    xv = np.random.default_rng(2).uniform(1.0, 2.0, (40, 60))
    first, second = f(xv), f(xv)
    np.testing.assert_allclose(first, expected_dropout(xv, 0.3, 11, counter=0), rtol=1e-12)
    np.testing.assert_allclose(second, expected_dropout(xv, 0.3, 11, counter=1), rtol=1e-12)
    assert np.mean(first != second) > 0.2
    for out in (first, second):
        kept = out != 0
        assert abs(1.0 - kept.mean() - 0.3) < 0.03
        np.testing.assert_allclose(out[kept], xv[kept] / 0.7, rtol=1e-12)


def test_parameter_gradients_match_finite_differences(target):
    """Gradients with respect to params (values held by bpc, read by the
    compiled function on every call) match finite differences taken by
    writing `param.value` in place between calls."""
    x = bpc.input("x", (None, 6), dtype="float64")
    y = bpc.input("y", (None,), dtype="int64")
    W = bpc.param("W", (6, 5), init="glorot_uniform", seed=3, dtype="float64")
    b = bpc.param("b", np.linspace(-0.3, 0.3, 5))
    loss = bpc.softmax_cross_entropy(bpc.tanh(x @ W + b), y)
    f = bpc.function([x, y], [loss, *bpc.grad(loss, [W, b])], target=target)
    rng = np.random.default_rng(4)
    xv, yv = rng.normal(size=(BATCH, 6)), rng.integers(0, 5, BATCH)
    _, gW, gb = f(xv, yv)
    eps = 1e-6
    for p, g in ((W, gW), (b, gb)):
        base = p.value.copy()
        for k in range(min(base.size, 8)):
            bumped = base.copy()
            bumped.reshape(-1)[k] += eps
            p.value = bumped
            up = float(f(xv, yv)[0])
            bumped.reshape(-1)[k] -= 2 * eps
            p.value = bumped
            down = float(f(xv, yv)[0])
            p.value = base
            np.testing.assert_allclose(g.reshape(-1)[k], (up - down) / (2 * eps), rtol=1e-5, atol=1e-8)


def test_hessian_vector_product_of_matmul_tanh(target):
    """Second order on the target: grad of (grad . v) is H v, checked against
    finite differences of the gradient along v, all in one function."""
    x = bpc.input("x", (None, 6), dtype="float64")
    W = bpc.input("W", (6, 3), dtype="float64")
    V = bpc.input("V", (6, 3), dtype="float64")
    c = np.linspace(-1.0, 1.0, 3)
    cost = bpc.sum(bpc.tanh(x @ W) * c) + 0.1 * bpc.sum(bpc.square(x @ W))
    g = bpc.grad(cost, W)
    hv = bpc.grad(bpc.sum(g * V), W)
    f = bpc.function([x, W, V], [g, hv], target=target)
    rng = np.random.default_rng(5)
    xv, wv, vv = rng.normal(size=(BATCH, 6)), 0.5 * rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    _, hv_value = f(xv, wv, vv)
    eps = 1e-5
    numeric = (f(xv, wv + eps * vv, vv)[0] - f(xv, wv - eps * vv, vv)[0]) / (2 * eps)
    np.testing.assert_allclose(hv_value, numeric, rtol=1e-6, atol=1e-8)
    assert np.max(np.abs(hv_value)) > 1e-2   # a real second-order term, not zeros


def test_results_of_a_call_survive_later_calls(target):
    """Returned arrays belong to the caller: a later call with other inputs
    does not overwrite them (no aliasing of internal buffers)."""
    x = bpc.input("x", (None, 6), dtype="float64")
    f = bpc.function([x], [bpc.tanh(x) * 2.0, bpc.sum(x, axis=0), bpc.sum(bpc.exp(x))], target=target)
    first_in = np.random.default_rng(6).normal(size=(BATCH, 6))
    first = f(first_in)
    kept = [np.array(a) for a in first]
    f(first_in + 1.0)
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)


def test_inputs_the_outputs_do_not_use_are_accepted(target):
    """A function may take inputs its outputs ignore (labels in an
    evaluation function); they are still validated, never read."""
    x = bpc.input("x", (None, 6), dtype="float64")
    y = bpc.input("y", (None,), dtype="int64")
    unused = bpc.input("unused", (3,), dtype="float64")
    f = bpc.function([x, y, unused], bpc.sum(x * 2.0), target=target)
    xv = np.random.default_rng(7).normal(size=(BATCH, 6))
    np.testing.assert_allclose(f(xv, np.zeros(BATCH, np.int64), np.ones(3)), 2.0 * xv.sum(), rtol=1e-12)
    with pytest.raises(bpc.CallError):
        f(xv, np.zeros(BATCH, np.int64), np.ones(4))

"""Graph passes as graph -> graph functions: each rewrite fires where it
should (and only there), node counts go down, leaves keep their identity,
and optimized and unoptimized functions compute the same values."""
import numpy as np
import pytest

import bpc
from bpc.graph.traverse import topo_sort
from bpc.passes import fold_constants, simplify, eliminate_common_subexpressions, optimize


def op_names(roots):
    return [n.op.name for n in topo_sort(roots) if n.op is not None]


def count(roots):
    return len(topo_sort(roots))


def run(roots, feeds, optimize=True):
    """Evaluate `roots` on the interpreter, with or without the passes."""
    inputs = list(feeds)
    f = bpc.function(inputs, roots, target="interpret", optimize=optimize)
    return f(*feeds.values())


X = bpc.input("x", (None, 6), dtype="float64")
XV = np.random.default_rng(0).normal(size=(5, 6))


# ----- simplify ----------------------------------------------------------------------------

IDENTITIES = {
    "x*1": lambda x: x * 1.0,
    "1*x": lambda x: 1.0 * x,
    "x+0": lambda x: x + 0.0,
    "0+x": lambda x: 0.0 + x,
    "x-0": lambda x: x - 0.0,
    "x/1": lambda x: x / 1.0,
    "x*ones": lambda x: x * np.ones(6),
    "x**1": lambda x: x ** 1,
    "--x": lambda x: -(-x),
    "transpose-transpose": lambda x: bpc.transpose(bpc.transpose(x)),
    "stop_gradient": lambda x: bpc.stop_gradient(x),
    "reshape-reshape": lambda x: bpc.reshape(bpc.reshape(x, (None, 2, 3)), (None, 6)),
    "noop-broadcast": lambda x: bpc.broadcast_to(bpc.reshape(x, (None, 1, 6)), (None, 1, 6)).reshape(None, 6),
}


@pytest.mark.parametrize("build", list(IDENTITIES.values()), ids=list(IDENTITIES))
def test_identities_simplify_to_x_itself(build):
    """Each identity rewrites to the very node x: fewer nodes, and the same
    values as the unrewritten graph."""
    y = build(X)
    (out,) = simplify([y])
    assert out is X, bpc.to_text(y)
    np.testing.assert_allclose(run([out], {X: XV}, optimize=False)[0], run([y], {X: XV}, optimize=False)[0])


def test_identities_that_would_change_the_shape_are_kept():
    """x * ones((3, 6)) with x of shape (6,) broadcasts: it is not x."""
    v = bpc.input("v", (6,), dtype="float64")
    y = v * np.ones((3, 6))
    (out,) = simplify([y])
    assert out.shape == (3, 6) and out is not v


def test_negations_fold_into_add_and_sub():
    """a - (-b) -> a + b and a + (-b) -> a - b: no neg node left."""
    a, b = bpc.input("a", (4,), dtype="float64"), bpc.input("b", (4,), dtype="float64")
    roots = simplify([a - (-b), a + (-b)])
    assert op_names(roots) == ["add", "sub"]
    av, bv = np.arange(4.0), np.linspace(1, 2, 4)
    np.testing.assert_allclose(run(roots, {a: av, b: bv}, optimize=False), [av + bv, av - bv])


def test_composed_transposes_become_one():
    """transpose(transpose(y, p), q) is one transpose with the composed permutation."""
    y = bpc.input("y", (2, 3, 5), dtype="float64")
    z = bpc.transpose(bpc.transpose(y, (1, 2, 0)), (1, 2, 0))
    (out,) = simplify([z])
    assert op_names([out]) == ["transpose"]
    yv = np.arange(30.0).reshape(2, 3, 5)
    np.testing.assert_array_equal(run([out], {y: yv}, optimize=False)[0],
                                  np.transpose(np.transpose(yv, (1, 2, 0)), (1, 2, 0)))


def test_reshape_of_reshape_is_one_reshape():
    y = bpc.reshape(bpc.reshape(X, (None, 3, 2)), (None, 2, 3))
    (out,) = simplify([y])
    assert op_names([out]) == ["reshape"] and out.inputs[0] is X and out.shape == (None, 2, 3)


def test_reductions_over_size_one_axes_become_reshapes():
    """sum/mean/max over axes of size 1 move no data: they become reshapes."""
    x = bpc.input("x", (None, 1, 6), dtype="float64")
    roots = [bpc.sum(x, axis=1), bpc.mean(x, axis=1, keepdims=True), bpc.max(x, axis=1)]
    out = simplify(roots)
    assert set(op_names(out)) == {"reshape"}
    xv = np.random.default_rng(1).normal(size=(5, 1, 6))
    for a, b in zip(run(out, {x: xv}, optimize=False), [xv.sum(1), xv.mean(1, keepdims=True), xv.max(1)]):
        np.testing.assert_allclose(a, b)


def test_constant_powers_become_square_and_sqrt():
    y = bpc.input("y", (4,), dtype="float64")
    assert op_names(simplify([y ** 2])) == ["square"]
    assert op_names(simplify([y ** 0.5])) == ["sqrt"]


def test_log_of_softmax_is_stable_before_the_passes():
    """bpc.log builds log(softmax(x)) as log_softmax when the node is made,
    so `grad` differentiates the stable form: where softmax underflows to 0,
    value and gradient are finite with and without the passes, and equal."""
    y = bpc.log(bpc.softmax(X))
    assert "div" not in op_names([y])
    w = bpc.input("w", (None, 6), dtype="float64")
    g = bpc.grad(bpc.sum(y * w), X)
    xv = XV.copy()
    xv[0, 0] = -900.0                     # softmax underflows to exactly 0 there
    wv = np.random.default_rng(2).normal(size=xv.shape)
    plain, optimized = run([y, g], {X: xv, w: wv}, optimize=False), run([y, g], {X: xv, w: wv})
    shifted = xv - xv.max(1, keepdims=True)
    expected = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    for values in (plain, optimized):
        assert all(np.all(np.isfinite(v)) for v in values)
        np.testing.assert_allclose(values[0], expected, rtol=1e-12)
        np.testing.assert_allclose(values[1], wv - np.exp(expected) * wv.sum(1, keepdims=True), rtol=1e-10)


def test_simplify_leaves_log_of_a_quotient_of_exp_alone():
    """Passes run after `grad`: rewriting log(exp(z) / s) to z - log(s) there
    would make the value finite and leave its gradient NaN. A node built
    without `bpc.log` (here with the op itself) stays as it is."""
    from bpc.ops import OPS
    y = OPS["log"](bpc.exp(X) / bpc.sum(bpc.exp(X), axis=1, keepdims=True))
    (out,) = simplify([y])
    assert out is y and op_names([out]).count("div") == 1


# ----- common subexpressions -------------------------------------------------------------

def test_cse_shares_sigmoid_between_forward_and_backward():
    """The gradient of softplus is sigmoid(z); a forward sigmoid(z) of the
    same z is the same node after CSE."""
    z = X * 2.0
    probs = bpc.sigmoid(z)
    g = bpc.grad(bpc.sum(bpc.softplus(z)), X)
    assert op_names([probs, g]).count("sigmoid") == 2
    out = eliminate_common_subexpressions([probs, g])
    assert op_names(out).count("sigmoid") == 1 and count(out) < count([probs, g])
    (shared,) = [n for n in topo_sort(out) if n.op is not None and n.op.name == "sigmoid"]
    assert out[0] is shared
    np.testing.assert_allclose(run(out, {X: XV}, optimize=False)[1], 2.0 / (1.0 + np.exp(-2.0 * XV)))


def test_cse_merges_duplicate_subgraphs_and_equal_constants():
    """tanh(x @ W) built twice is computed once; equal small constants are one node."""
    W = bpc.param("W", (6, 3), seed=0, dtype="float64")
    a, b = bpc.tanh(X @ W) * 0.5, bpc.tanh(X @ W) * 0.5
    out = eliminate_common_subexpressions([a + b])
    assert op_names(out).count("tanh") == 1 and op_names(out).count("matmul") == 1
    assert op_names(out).count("mul") == 1
    assert sum(n.kind == "constant" for n in topo_sort(out)) == 1
    np.testing.assert_allclose(run(out, {X: XV}, optimize=False)[0], np.tanh(XV @ W.value))


def test_cse_keeps_random_draws_apart():
    """Two dropout masks of the same tensor are different draws, never merged."""
    d1, d2 = bpc.dropout(X, 0.5, seed=1), bpc.dropout(X, 0.5, seed=1)
    out = optimize([d1 - d2])[0]
    assert op_names(out).count("random_uniform") == 2


# ----- constant folding -----------------------------------------------------------------------

def test_constants_fold_into_one():
    """Ops whose inputs are all constants are evaluated at compile time."""
    c = bpc.constant(np.arange(6.0)) * 2.0 + bpc.exp(bpc.constant(np.zeros(6)))
    (out,) = fold_constants([X + c])
    assert op_names([out]) == ["add"] and out.inputs[0] is X
    folded = out.inputs[1]
    assert folded.kind == "constant" and folded.dtype == np.float64
    np.testing.assert_array_equal(folded.value, np.arange(6.0) * 2.0 + 1.0)
    assert count([out]) < count([X + c])


def test_folding_leaves_large_and_batch_sized_results_alone():
    """Large constant results stay ops (they would bloat the program), and
    nothing depending on an input is folded."""
    big = bpc.constant(np.ones(5000)) * 2.0
    (out,) = fold_constants([big])
    assert op_names([out]) == ["mul"]
    (out,) = fold_constants([X * 2.0])
    assert op_names([out]) == ["mul"]


# ----- the pipeline ---------------------------------------------------------------------------

def mlp_step():
    """A small network's loss and gradients, and its SGD update values."""
    x = bpc.input("x", (None, 6), dtype="float64")
    y = bpc.input("y", (None,), dtype="int64")
    W1 = bpc.param("W1", (6, 7), seed=1, dtype="float64")
    b1 = bpc.param("b1", (7,), init="zeros", dtype="float64")
    W2 = bpc.param("W2", (7, 3), seed=2, dtype="float64")
    h = bpc.sigmoid(x @ W1 + b1)
    logits = bpc.log(bpc.softmax(h @ W2 * 1.0 + 0.0))
    loss = -bpc.mean(bpc.sum(logits * bpc.one_hot(y, 3, "float64"), axis=-1)) + 0.01 * bpc.sum(W1 ** 2)
    params = [W1, b1, W2]
    return x, y, params, loss, bpc.grad(loss, params)


def test_optimize_reduces_node_counts_and_keeps_leaves():
    """Each pass reports its node count; the total goes down, no pass adds
    nodes, and inputs and params are the same objects afterwards."""
    x, y, params, loss, grads = mlp_step()
    roots = [loss, *grads]
    new_roots, _, report = optimize(roots)
    counts = [n for _, n in report]
    assert counts[-1] < counts[0] and all(b <= a for a, b in zip(counts, counts[1:])), report
    leaves = {n.id for n in topo_sort(new_roots) if n.op is None and n.kind != "constant"}
    assert leaves == {t.id for t in [x, y, *params]}


def test_optimize_iterates_to_a_fixed_point():
    """The driver runs the passes round after round until nothing changes:
    a pass that makes one step of progress per call (here: peel one neg
    off the root) is run as often as it takes, well past any fixed cap."""
    deep = X
    for _ in range(20):
        deep = bpc.neg(deep)

    def peel(roots):
        r = roots[0]
        return [r.inputs[0] if r.op is not None and r.op.name == "neg" else r]
    (out,), _, report = optimize([deep], passes=(("peel", peel),))
    assert out is X and len(report) == 1 + 21 + 1      # input, 20 peels and a round that changes nothing, DCE
    # The real pipeline's result is a fixed point: optimizing it again changes nothing.
    x, y, params, loss, grads = mlp_step()
    once = optimize([loss, *grads])[0]
    assert all(a is b for a, b in zip(optimize(once)[0], once))


def test_dead_code_elimination_drops_updates_that_write_nothing():
    """A program is what its roots reach; what can be dead is an effect:
    an update whose value, once simplified, is the param itself."""
    W, V = bpc.param("W", np.ones(3)), bpc.param("V", np.ones(3))
    outs, updates, report = optimize([bpc.sum(X)], [(W, W * 1.0 + 0.0), (V, V - 0.5)])
    assert [t for t, _ in updates] == [V] and report[-1][0] == "eliminate_dead_code"
    f = bpc.function([X], bpc.sum(X), updates={W: W * 1.0, V: V - 0.5}, target="interpret")
    assert [t for t, _ in f.program.updates] == [V]
    f(np.ones((2, 6)))
    np.testing.assert_array_equal(W.value, np.ones(3))
    np.testing.assert_array_equal(V.value, np.full(3, 0.5))


def test_rewritten_nodes_keep_name_and_source_line():
    """A node rebuilt by a pass keeps its name and where it was built, so
    errors and dumps still point at the user's line."""
    y = bpc.tanh(bpc.neg(bpc.neg(X)) * 1.0, name="activation")
    (out,) = optimize([y])[0]
    assert out.name == "activation" and out.where == y.where and "test_passes.py:" in out.where


def test_optimized_and_unoptimized_functions_agree():
    """The passes change the graph, not the values: loss, gradients and the
    updated params agree (to rounding) with the unoptimized graph."""
    x, y, params, loss, grads = mlp_step()
    rng = np.random.default_rng(3)
    xv, yv = rng.normal(size=(5, 6)), rng.integers(0, 3, 5)
    start = [p.value.copy() for p in params]
    results, updated = [], []
    for opt in (False, True):
        for p, v in zip(params, start):
            p.value = v
        f = bpc.function([x, y], [loss, *grads], target="interpret", optimize=opt,
                         updates={p: p - 0.1 * g for p, g in zip(params, grads)})
        results.append(f(xv, yv))
        updated.append([p.value.copy() for p in params])
    assert f.program.report[-1][1] < f.program.report[0][1]
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    for a, b in zip(*updated):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)

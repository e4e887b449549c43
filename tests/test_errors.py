"""Errors users get: at graph construction (bpc.ShapeError naming the op,
the operand shapes and the user's file:line), at call time (bpc.CallError
before anything runs) and at run time (check_numerics naming the first node
that produced a NaN or Inf)."""
import functools
import inspect

import numpy as np
import pytest

import bpc


# ----- graph construction ----------------------------------------------------------------

def construction_error(build):
    """Run `build` (a one-line lambda) expecting a ShapeError; return the
    message and the "test_errors.py:<line>" it must name: the lambda's own
    line, read from its code object."""
    with pytest.raises(bpc.ShapeError) as info:
        build()
    return str(info.value), f"test_errors.py:{build.__code__.co_firstlineno}"


def this_line():
    """"test_errors.py:<line>" of the caller's current line."""
    return f"test_errors.py:{inspect.currentframe().f_back.f_lineno}"


def test_shape_error_is_a_value_error():
    """Code that catches ValueError also catches bpc's shape errors."""
    assert issubclass(bpc.ShapeError, ValueError) and issubclass(bpc.CallError, ValueError)


def test_add_broadcast_mismatch_names_op_shapes_and_line():
    """(N, 4) + (3,) cannot broadcast: the error names add, both shapes, the line."""
    x, v = bpc.input("x", (None, 4)), bpc.input("v", (3,))
    msg, line = construction_error(lambda: x + v)
    assert msg.startswith("add:") and "(N, 4)" in msg and "(3,)" in msg and line in msg, msg


def test_batch_dimension_only_broadcasts_with_itself_or_one():
    """A declared batch (N) never matches a fixed size, and the message says so."""
    x, m = bpc.input("x", (None, 4)), bpc.input("m", (5, 4))
    msg, line = construction_error(lambda: bpc.mul(x, m))
    assert msg.startswith("mul:") and "(N, 4)" in msg and "(5, 4)" in msg and line in msg, msg
    assert "batch size" in msg


def test_matmul_inner_dimension_mismatch_names_op_shapes_and_line():
    """(N, 4) @ (5, 3): inner dimensions 4 and 5 differ."""
    x, w = bpc.input("x", (None, 4)), bpc.param("w", (5, 3))
    msg, line = construction_error(lambda: x @ w)
    assert msg.startswith("matmul:") and "(N, 4)" in msg and "(5, 3)" in msg and line in msg, msg
    assert "inner dimensions" in msg


def test_matmul_rejects_scalars_and_batches_that_do_not_broadcast():
    """Vectors and stacks of matrices follow NumPy's @; a 0-d operand, or
    leading dimensions that do not broadcast, are errors naming both shapes."""
    x, s = bpc.input("x", (None, 4, 3)), bpc.input("s", ())
    msg, line = construction_error(lambda: bpc.matmul(x, s))
    assert msg.startswith("matmul:") and "at least one dimension" in msg and "()" in msg and line in msg, msg
    m = bpc.input("m", (2, 3, 5))
    msg, line = construction_error(lambda: x @ m)
    assert msg.startswith("matmul:") and "(N, 4, 3)" in msg and "(2, 3, 5)" in msg and line in msg, msg
    assert "do not broadcast" in msg and "batch size" in msg


def test_reshape_errors_name_shapes_and_line():
    """Element counts must agree, and the batch dimension must be kept."""
    x = bpc.input("x", (None, 6))
    msg, line = construction_error(lambda: bpc.reshape(x, (None, 4)))
    assert msg.startswith("reshape:") and "(N, 6)" in msg and "(None, 4)" in msg and line in msg, msg
    msg, line = construction_error(lambda: bpc.reshape(x, (6, 5)))
    assert msg.startswith("reshape:") and "batch" in msg and line in msg, msg
    msg, line = construction_error(lambda: x.reshape(None, -1, -1))
    assert msg.startswith("reshape:") and "-1" in msg and line in msg, msg


def test_softmax_cross_entropy_bad_labels_names_op_shapes_and_line():
    """Integer labels must have the logits' shape without the class axis;
    probability targets must have the logits' shape."""
    logits = bpc.input("logits", (None, 7))
    labels = bpc.input("labels", (None, 2), dtype="int64")
    msg, line = construction_error(lambda: bpc.softmax_cross_entropy(logits, labels))
    assert msg.startswith("softmax_cross_entropy:") and "(N, 7)" in msg and "(N, 2)" in msg and line in msg, msg
    targets = bpc.input("targets", (None, 6))
    msg, line = construction_error(lambda: bpc.softmax_cross_entropy(logits, targets))
    assert msg.startswith("softmax_cross_entropy:") and "(N, 7)" in msg and "(N, 6)" in msg and line in msg, msg


@pytest.mark.parametrize("build, op, fragment", [
    (lambda x, k: bpc.sum(x, axis=2), "sum", "axis 2 is out of range"),
    (lambda x, k: bpc.max(x, axis=(1, 1)), "max", "repeated axis"),
    (lambda x, k: bpc.mean(k), "mean", "floating-point"),
    (lambda x, k: bpc.log(k), "log", "floating-point"),
    (lambda x, k: bpc.softmax(k), "softmax", "floating-point"),
    (lambda x, k: bpc.argmax(x, axis=(0, 1)), "argmax", "one int"),
    (lambda x, k: bpc.transpose(x, (0, 3)), "transpose", "permutation"),
    (lambda x, k: bpc.broadcast_to(x, (7, 3)), "broadcast_to", "(N, 6)"),
    (lambda x, k: bpc.one_hot(x, 3), "one_hot", "integers"),
    (lambda x, k: bpc.dropout(x, rate=1.0), "dropout", "rate"),
], ids=["sum-axis", "max-repeated-axis", "mean-int", "log-int", "softmax-int", "argmax-axes", "transpose-axes",
        "broadcast_to", "one_hot-float", "dropout-rate"])
def test_every_construction_error_names_op_operand_and_line(build, op, fragment):
    """Checks made before an op is built (axes, dtypes, arguments) report
    like shape rules do: op name, operand shapes, the user's line."""
    x, k = bpc.input("x", (None, 6)), bpc.input("k", (None,), dtype="int64")
    with pytest.raises(bpc.ShapeError) as info:
        build(x, k)
    msg = str(info.value)
    line = f"test_errors.py:{build.__code__.co_firstlineno}"
    assert msg.startswith(op + ":") and fragment in msg and "[operands:" in msg and line in msg, msg


def test_function_needs_every_input_the_graph_uses():
    """A graph input left out of bpc.function's inputs is named, with where it was declared."""
    x, y = bpc.input("x", (None, 3)), bpc.input("y", (None, 3))
    with pytest.raises(bpc.GraphError, match=r"needs input 'y' \(declared at .*test_errors.py:\d+"):
        bpc.function([x], x + y, target="interpret")



@pytest.mark.parametrize("make, fragment", [
    (lambda x, W: bpc.function([x, x], bpc.sum(x)), "distinct names"),
    (lambda x, W: bpc.function([x + 1.0], bpc.sum(x)), "must be bpc.input tensors"),
    (lambda x, W: bpc.function([x], [bpc.sum(x), 3.0]), "outputs must be bpc tensors"),
    (lambda x, W: bpc.function([x], bpc.sum(x), updates={x: x}), "keys must be params"),
    (lambda x, W: bpc.function([x], bpc.sum(x), updates=[(W, W), (W, W * 2.0)]), "updated twice"),
])
def test_malformed_programs_raise_graph_error(make, fragment):
    x, W = bpc.input("x", (None, 3)), bpc.param("W", np.ones(3))
    with pytest.raises(bpc.GraphError, match=fragment):
        make(x, W)
    assert issubclass(bpc.GraphError, ValueError)

# ----- call time ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def classifier(target):
    """One compiled function per target, shared by the call-error tests:
    f(x: f32[N,4], mask: f32[N,1], y: i64[N]) -> loss, with 3 classes."""
    x = bpc.input("x", (None, 4))
    mask = bpc.input("mask", (None, 1))
    y = bpc.input("y", (None,), dtype="int64")
    W = bpc.param("W", (4, 3), seed=0)
    loss = bpc.softmax_cross_entropy((x * mask) @ W, y)
    return bpc.function([x, mask, y], loss, target=target)


def good_args(batch=5):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(batch, 4)).astype(np.float32), np.ones((batch, 1), np.float32),
            rng.integers(0, 3, batch))


def test_valid_call_runs(target):
    """The baseline: positional and keyword calls work and agree."""
    f = classifier(target)
    x, mask, y = good_args()
    a, b = f(x, mask, y), f(y=y, x=x, mask=mask)
    assert np.isfinite(a) and a == b


@pytest.mark.parametrize("call, fragment", [
    (lambda f, x, m, y: f(x, m), "missing 'y'"),
    (lambda f, x, m, y: f(x), "missing 'mask', 'y'"),
    (lambda f, x, m, y: f(x, m, y, y), "takes 3 arguments, got 4"),
    (lambda f, x, m, y: f(x, m, y, z=y), "unexpected argument 'z'"),
    (lambda f, x, m, y: f(x, m, y, x=x), "two values for 'x'"),
], ids=["missing-one", "missing-two", "extra-positional", "extra-keyword", "duplicate"])
def test_bad_argument_lists_raise_call_error(target, call, fragment):
    """Missing, extra and duplicated arguments are named, with where the function was built."""
    f = classifier(target)
    with pytest.raises(bpc.CallError) as info:
        call(f, *good_args())
    assert fragment in str(info.value) and "test_errors.py:" in str(info.value), str(info.value)


def _replace(args, index, value):
    args = list(args)
    args[index] = value
    return args


@pytest.mark.parametrize("index, value, fragment", [
    (0, np.zeros((5, 4, 1), np.float32), "expected a 2-d array"),
    (0, np.zeros(4, np.float32), "expected a 2-d array"),
    (0, np.zeros((5, 3), np.float32), "axis 1 must be 4, got 3"),
    (1, np.ones((4, 1), np.float32), "batch dimension (axis 0) is 4, but an earlier input has batch size 5"),
    (2, np.zeros(6, np.int64), "batch dimension (axis 0) is 6"),
    (2, np.zeros(5, np.float64), "expected int64, got float64"),
    (2, np.array([0, 1, 3, 2, 0]), "label 3 is outside [0, 3)"),
    (2, np.array([0, 1, -1, 2, 0]), "label -1 is outside [0, 3)"),
    (0, np.full((5, 4), "a"), "expected float32 numbers"),
], ids=["rank-3", "rank-1", "static-dim", "batch-mismatch", "batch-mismatch-labels", "float-labels",
        "label-too-big", "label-negative", "strings"])
def test_bad_arrays_raise_call_error_before_running(target, index, value, fragment):
    """Wrong rank, wrong static dimension, inconsistent batch sizes, floats
    for integer labels, labels outside [0, classes) and non-numbers: a
    CallError naming the input, raised before any kernel runs (the params
    are untouched and a later good call still works)."""
    f = classifier(target)
    args = good_args()
    with pytest.raises(bpc.CallError) as info:
        f(*_replace(args, index, value))
    assert fragment in str(info.value), str(info.value)
    assert f.inputs[index].name in str(info.value) or "label" in fragment
    assert np.isfinite(f(*args))


def test_empty_batch_is_a_call_error(target):
    """Zero rows: nothing sensible to compute (a mean over no rows), so an error."""
    f = classifier(target)
    x, mask, y = good_args()
    with pytest.raises(bpc.CallError, match="empty batch"):
        f(x[:0], mask[:0], y[:0])


def test_safe_conversions_are_accepted(target):
    """Arguments that convert without losing information are accepted:
    float64 for float32 (same kind), ints for floats, int32 for int64,
    non-contiguous views."""
    f = classifier(target)
    x, mask, y = good_args()
    expected = f(x, mask, y)
    np.testing.assert_allclose(f(x.astype(np.float64), np.ones((5, 1), np.int64), y.astype(np.int32)),
                               expected, rtol=1e-6)
    wide = np.repeat(x, 2, axis=1)[:, ::2]      # a strided view with the same values
    np.testing.assert_allclose(f(wide, mask, y), expected, rtol=1e-6)


# ----- run time: check_numerics ------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy warns about the NaN/Inf on purpose
def test_check_numerics_names_the_first_node_producing_nan(target):
    """log of a negative input makes the first NaN: the error names that
    log node and the line that built it, not the nodes downstream."""
    x = bpc.input("x", (None, 3), dtype="float64")
    h = bpc.log(x, name="log_of_x"); log_line = this_line()
    out = bpc.sum(bpc.exp(h) * 2.0 + 1.0)
    f = bpc.function([x], out, target=target, check_numerics=True)
    assert np.isfinite(f(np.ones((4, 3))))
    with pytest.raises(FloatingPointError) as info:
        f(np.array([[1.0, 2.0, 3.0], [1.0, -1.0, 2.0]]))
    msg = str(info.value)
    assert "'log_of_x'" in msg and "log," in msg and log_line in msg, msg


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy warns about the NaN/Inf on purpose
def test_check_numerics_names_an_infinite_division_and_a_nan_input(target):
    """Inf counts too (1/0), and a NaN fed in is blamed on the input itself."""
    x = bpc.input("x", (None, 2), dtype="float64")
    inverse = 1.0 / x; div_line = this_line()
    f = bpc.function([x], bpc.sum(inverse * x), target=target, check_numerics=True)
    with pytest.raises(FloatingPointError) as info:
        f(np.array([[1.0, 0.0]]))
    assert f"'{inverse.name}' (div, built at" in str(info.value) and div_line in str(info.value), str(info.value)
    with pytest.raises(FloatingPointError, match=r"'x' \(input"):
        f(np.array([[1.0, np.nan]]))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy warns about the NaN/Inf on purpose
def test_check_numerics_in_a_training_step_blames_the_forward_node(target):
    """With updates, the check re-runs on the values from before the step,
    so it still names the node that made the first NaN (the sqrt)."""
    x = bpc.input("x", (None, 3), dtype="float64")
    w = bpc.param("w", np.ones(3))
    r = bpc.sqrt(x * w, name="root")
    loss = bpc.mean(r)
    step = bpc.function([x], loss, updates={w: w - 0.1 * bpc.grad(loss, w)}, target=target,
                        check_numerics=True)
    step(np.ones((2, 3)))
    with pytest.raises(FloatingPointError, match=r"'root' \(sqrt"):
        step(np.array([[1.0, -4.0, 1.0]]))


def test_reshape_keeps_the_batch_dimension_as_often_as_it_was():
    """(N, N) has N*N elements, (N, 1) has N: refused when the node is built,
    not with a NumPy error at call time (found by the fuzzer)."""
    x = bpc.input("x", (None, 1), dtype="float64")
    with pytest.raises(bpc.ShapeError, match=r"reshape: .*must appear as often in both.*test_errors.py"):
        bpc.reshape(x * x.T, (None, 1))
    assert bpc.reshape(x * x.T, (None, None, 1)).shape == (None, None, 1)


@pytest.mark.parametrize("build, op, fragment", [
    (lambda x, t, i: x[:, :, 0], "getitem", "too many indices: 3 for a 2-d tensor"),
    (lambda x, t, i: x[1:], "getitem", "axis 0 is the batch dimension: it can only be taken whole"),
    (lambda x, t, i: x[:, 7], "getitem", "index 7 is out of range for axis 1 of size 4"),
    (lambda x, t, i: x[:, ::0], "getitem", "slice step cannot be zero"),
    (lambda x, t, i: x[:, i], "getitem", "use bpc.take"),
    (lambda x, t, i: x[..., ...], "getitem", "a single ellipsis"),
    (lambda x, t, i: bpc.concat([x, t], axis=1), "concat", "(N, 4) and (5, 3) differ outside axis 1"),
    (lambda x, t, i: bpc.concat([x, x], axis=0), "concat", "batch dimension: tensors cannot be joined along it"),
    (lambda x, t, i: bpc.concat([x, x], axis=2), "concat", "axis 2 is out of range"),
    (lambda x, t, i: bpc.stack([x, t]), "stack", "one shape"),
    (lambda x, t, i: bpc.split(t, 2, axis=0), "split", "size 5 does not split into 2 equal parts"),
    (lambda x, t, i: bpc.take(t, x), "take", "ids must be integers"),
    (lambda x, t, i: bpc.take(x, i), "take", "batch dimension: take from a table with a fixed size"),
])
def test_indexing_errors_name_op_and_line(build, op, fragment):
    x, t = bpc.input("x", (None, 4)), bpc.param("t", (5, 3))
    i = bpc.input("i", (None, 2), dtype="int64")
    msg, _ = construction_error(lambda: build(x, t, i))
    line = f"test_errors.py:{build.__code__.co_firstlineno}"   # the index or call itself
    assert msg.startswith(f"{op}:") and fragment in msg and line in msg, msg


def test_take_checks_ids_given_as_input_and_zeroes_computed_ones_out_of_range(target):
    """An id argument outside the table raises before anything runs; a
    computed id out of range reads a zero row (take is one_hot(ids) @
    table), on every target."""
    t = bpc.param("t", np.arange(6.0).reshape(3, 2))
    ids = bpc.input("ids", (None,), dtype="int64")
    f = bpc.function([ids], [bpc.take(t, ids), bpc.take(t, ids + 2)], target=target)
    with pytest.raises(bpc.CallError, match=r"input 'ids': label 3 is outside \[0, 3\)"):
        f(np.array([0, 3]))
    got, shifted = f(np.array([0, 2, 1]))
    np.testing.assert_array_equal(got, [[0, 1], [4, 5], [2, 3]])
    np.testing.assert_array_equal(shifted, [[4, 5], [0, 0], [0, 0]])

"""An op is one declaration: the passes and code generators read its facts
(how a reduction folds, which kernel runs it, whether it is pure) from the
`Op`, never from its name. So a new reduction declared with a `Reduction`
runs on every target without touching them, and a new op of kind "other"
runs on the interpreter and fails clearly, naming op and target, on a
target that has no emitter for it."""
import numpy as np
import pytest

import bpc
from bpc.errors import CompileError
from bpc.ops.core import Op, Reduction, normalize_axes
from bpc.ops.structural import broadcast_to


def _reduce_infer(inputs, attrs):
    x, = inputs
    keep = attrs["keepdims"]
    shape = tuple(1 if a in attrs["axis"] else d for a, d in enumerate(x.shape) if keep or a not in attrs["axis"])
    return shape, x.dtype


def _new_reduction(name, numpy_fn, reduction):
    op = Op(name, "reduce", _reduce_infer,
            lambda attrs, shape, x: numpy_fn(x, axis=attrs["axis"], keepdims=attrs["keepdims"]).astype(x.dtype),
            lambda n, g: (broadcast_to(bpc.reshape(g, tuple(1 if a in n.attrs["axis"] else d for a, d in
                                                            enumerate(n.inputs[0].shape))), n.inputs[0].shape),),
            reduction=reduction)

    def build(x, axis, keepdims=False):
        return op(x, axis=normalize_axes(axis, x.ndim), keepdims=keepdims)
    return build


total = _new_reduction("test_total", np.sum, Reduction("add"))
biggest = _new_reduction("test_biggest", np.max, Reduction("max", wide=False))


def test_a_reduction_declared_on_its_op_runs_on_every_target(target):
    """Declared with a Reduction only: interpret, cpu and cuda compute it
    (fused into loop nests with the elementwise ops around it), over rows,
    over the batch (memory-order columns on cpu) and with keepdims; the sum's
    gradient rule differentiates through it."""
    x = bpc.input("x", (None, 6), dtype="float64")
    outs = [total(x * 2.0, axis=1), total(x, axis=0, keepdims=True), biggest(x - 1.0, axis=1),
            biggest(x, axis=0)]
    f = bpc.function([x], outs + [bpc.grad(bpc.sum(total(x * x, axis=1)), [x])[0]], target=target)
    X = np.random.default_rng(1).normal(size=(7, 6))
    want = [(X * 2).sum(1), X.sum(0, keepdims=True), (X - 1).max(1), X.max(0), 2 * X]
    for got, ref in zip(f(X), want):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_an_op_without_an_emitter_runs_on_interpret_and_fails_clearly_elsewhere(target):
    """A new op of kind "other" (a cumulative sum): the interpreter runs it;
    a compiled target without an emitter for its kernel form refuses it
    when the function is built, naming the op, the target and the user's
    line (no KeyError from deep inside a code generator)."""
    cumsum = Op("test_cumsum", "other", lambda inputs, attrs: (inputs[0].shape, inputs[0].dtype),
                lambda attrs, shape, x: np.cumsum(x, axis=-1))
    x = bpc.input("x", (None, 4))
    y = cumsum(x) * 2.0
    X = np.arange(8, dtype=np.float32).reshape(2, 4)
    if target == "interpret":
        np.testing.assert_allclose(bpc.function([x], y, target=target)(X), np.cumsum(X, axis=-1) * 2)
        return
    with pytest.raises(CompileError, match=rf"op 'test_cumsum' .*test_op_facts\.py.* no kernel on target "
                                           rf"'{target}'.*_kernel_test_cumsum.*'interpret' runs it"):
        bpc.function([x], y, target=target)


def test_op_declarations_are_checked():
    with pytest.raises(ValueError, match="a reduce op needs a Reduction"):
        Op("test_bad_reduce", "reduce", _reduce_infer, lambda attrs, shape, x: x)
    with pytest.raises(ValueError, match="combine must be 'add' or 'max'"):
        Reduction("min")
    with pytest.raises(ValueError, match="iteration must be"):
        Op("test_bad_iteration", "scan", _reduce_infer, lambda attrs, shape, x: x)


def test_impure_ops_are_never_merged_or_folded():
    """Two dropout masks drawn with the same arguments stay two draws
    (random_uniform is declared impure), while two equal pure expressions
    are merged by common-subexpression elimination."""
    from bpc.ops.nn import random_uniform
    from bpc.passes.simplify import eliminate_common_subexpressions as cse
    assert not random_uniform.pure
    x = bpc.input("x", (None, 3))
    c = bpc.constant(np.int64(0))
    a = random_uniform(c, shape=(2, 3), seed=1, dtype="float32")
    b = random_uniform(c, shape=(2, 3), seed=1, dtype="float32")
    merged = cse([a, b, bpc.exp(x), bpc.exp(x)])
    assert merged[0] is not merged[1] and merged[2] is merged[3]

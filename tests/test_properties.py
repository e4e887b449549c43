"""Property tests (hypothesis) for the binary elementwise ops over random
shapes and broadcast pairs, batch dimensions included: the forward pass
equals NumPy's, and the gradients have the operands' shapes and equal the
NumPy partial derivatives summed back over the broadcast axes. Interpreter
only: these check the op definitions, not a backend."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import bpc

SETTINGS = settings(max_examples=25, deadline=None)


def unbroadcast(g, shape):
    """Sum a gradient of the broadcast shape back to an operand's shape."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    return g.sum(axis=tuple(i for i, d in enumerate(shape) if d == 1), keepdims=True).reshape(shape)


# name: (bpc function, NumPy forward, NumPy partials (da, db), domain of a, domain of b)
BINARY = {
    "add": (bpc.add, np.add, lambda a, b: (np.ones_like(a * b), np.ones_like(a * b)), "any", "any"),
    "sub": (bpc.sub, np.subtract, lambda a, b: (np.ones_like(a * b), -np.ones_like(a * b)), "any", "any"),
    "mul": (bpc.mul, np.multiply, lambda a, b: (b + 0 * a, a + 0 * b), "any", "any"),
    "div": (bpc.div, np.divide, lambda a, b: (1 / b + 0 * a, -a / b ** 2), "any", "nonzero"),
    "pow": (bpc.pow, np.power, lambda a, b: (b * a ** (b - 1), a ** b * np.log(a)), "positive", "any"),
    "maximum": (bpc.maximum, np.maximum, lambda a, b: ((a >= b) * 1.0, (a < b) * 1.0), "any", "any"),
    "minimum": (bpc.minimum, np.minimum, lambda a, b: ((a <= b) * 1.0, (a > b) * 1.0), "any", "any"),
}


def sample(rng, shape, domain, dtype):
    if domain == "positive":
        v = rng.uniform(0.5, 2.0, shape)
    elif domain == "nonzero":
        v = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    else:
        v = rng.normal(size=shape)
    return np.asarray(v, dtype=dtype)


@st.composite
def broadcast_pairs(draw):
    """Two operand shapes that broadcast together: each drops some leading
    axes of a common shape and sets some axes to 1. When both keep the
    leading axis at full size (> 1), it may be declared the batch (None)."""
    full = draw(st.lists(st.integers(1, 5), min_size=0, max_size=4))

    def operand():
        dims = full[draw(st.integers(0, len(full))):]
        return [1 if draw(st.booleans()) else d for d in dims]

    a, b = operand(), operand()
    batch = bool(full) and full[0] > 1 and draw(st.booleans())
    declared = []
    for dims in (a, b):
        is_batch = batch and len(dims) == len(full) and dims[0] == full[0]
        declared.append(tuple([None] + dims[1:]) if is_batch else tuple(dims))
    return tuple(a), tuple(b), declared[0], declared[1]


@pytest.mark.parametrize("name", list(BINARY))
@SETTINGS
@given(shapes=broadcast_pairs(), dtype=st.sampled_from(["float64", "float32"]), seed=st.integers(0, 2 ** 31))
def test_binary_op_forward_and_gradient_match_numpy(name, shapes, dtype, seed):
    """For any broadcast pair: forward == NumPy, result shape == NumPy's
    broadcast shape (None where the batch is), and the gradients of
    sum(out * w) have the operand shapes and equal sum-to-shape of the
    NumPy partials times w."""
    fn, np_fn, partials, dom_a, dom_b = BINARY[name]
    shape_a, shape_b, decl_a, decl_b = shapes
    rng = np.random.default_rng(seed)
    av, bv = sample(rng, shape_a, dom_a, dtype), sample(rng, shape_b, dom_b, dtype)
    a, b = bpc.input("a", decl_a, dtype=dtype), bpc.input("b", decl_b, dtype=dtype)
    out = fn(a, b)
    expected = np_fn(av, bv)
    assert out.dtype == np.dtype(dtype)
    assert len(out.shape) == expected.ndim
    assert all(d is None or d == e for d, e in zip(out.shape, expected.shape))
    assert (None in out.shape) == (None in decl_a or None in decl_b)

    w = bpc.input("w", out.shape, dtype=dtype)
    wv = sample(rng, expected.shape, "any", dtype)
    ga, gb = bpc.grad(bpc.sum(out * w), [a, b])
    assert ga.shape == decl_a and gb.shape == decl_b
    f = bpc.function([a, b, w], [out, ga, gb], target="interpret")
    got, got_a, got_b = f(av, bv, wv)

    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(got, expected, **tol)
    da, db = partials(av.astype(np.float64), bv.astype(np.float64))
    w64 = wv.astype(np.float64)
    for g, partial, shape in ((got_a, da, shape_a), (got_b, db, shape_b)):
        assert g.shape == shape and g.dtype == np.dtype(dtype)
        np.testing.assert_allclose(g, unbroadcast(np.broadcast_to(partial * w64, expected.shape), shape), **tol)


@SETTINGS
@given(shapes=broadcast_pairs())
def test_incompatible_shapes_raise_shape_error(shapes):
    """Changing one broadcast axis of a compatible pair to a size that
    matches neither 1 nor the other operand is a ShapeError naming both
    shapes; compatible pairs never raise."""
    shape_a, shape_b, decl_a, decl_b = shapes
    bpc.add(bpc.input("a", decl_a), bpc.input("b", decl_b))
    clash = [i for i in range(1, min(len(decl_a), len(decl_b)) + 1)
             if decl_a[-i] not in (None, 1) and decl_b[-i] not in (None,)]
    if not clash:
        return
    i = clash[0]
    bad_b = list(decl_b)
    bad_b[-i] = decl_a[-i] + 1
    with pytest.raises(bpc.ShapeError) as info:
        bpc.add(bpc.input("a", decl_a), bpc.input("b", tuple(bad_b)))
    assert bpc.graph.tensor.format_shape(tuple(bad_b)) in str(info.value)

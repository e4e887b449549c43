"""bpc.grad as a graph transformation: chain rule, fan-out, broadcasting,
zero gradients, second order, and an MLP trained with hand-written SGD."""
import numpy as np
import pytest

import bpc


def test_fan_out_contributions_add_up():
    x = bpc.input("x", (3,), dtype="float64")
    y = x * x + x              # x used three times
    g = bpc.grad(bpc.sum(y), x)
    f = bpc.function([x], g, target="interpret")
    v = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(f(v), 2 * v + 1)


def test_gradient_of_broadcast_operand_is_reduced_to_its_shape():
    x = bpc.input("x", (None, 4), dtype="float64")
    b = bpc.param("b", np.zeros((1, 4)))
    c = bpc.param("c", np.zeros(()))
    gb, gc = bpc.grad(bpc.sum((x + b) * 2.0 + c), [b, c])
    assert gb.shape == (1, 4) and gc.shape == ()
    f = bpc.function([x], [gb, gc], target="interpret")
    vb, vc = f(np.ones((5, 4)))
    np.testing.assert_allclose(vb, np.full((1, 4), 10.0))
    assert float(vc) == 20.0


def test_unrelated_and_non_differentiable_paths_give_zero():
    x = bpc.input("x", (3,), dtype="float64")
    w = bpc.param("w", np.ones(3))
    unused = bpc.param("unused", np.ones((2, 2)))
    cost = bpc.sum(bpc.greater(x * w, 0.0))      # only through a comparison
    gw, gu = bpc.grad(cost, [w, unused])
    f = bpc.function([x], [gw, gu], target="interpret")
    a, b = f(np.array([1.0, -1.0, 2.0]))
    assert np.all(a == 0) and np.all(b == 0) and b.shape == (2, 2)


def test_grad_rejects_non_scalar_cost_and_integer_wrt():
    x = bpc.input("x", (3,))
    labels = bpc.input("labels", (3,), dtype="int64")
    with pytest.raises(bpc.ShapeError, match="must be a scalar"):
        bpc.grad(x * 2.0, [x])
    with pytest.raises(bpc.ShapeError, match="int64"):
        bpc.grad(bpc.sum(x), [labels])


def test_hessian_vector_product_matches_finite_differences():
    x = bpc.input("x", (4,), dtype="float64")
    v = bpc.input("v", (4,), dtype="float64")
    cost = bpc.sum(bpc.tanh(x) * x * x) + bpc.sum(bpc.exp(x)) * 0.5
    (g,) = bpc.grad(cost, [x])
    hv = bpc.grad(bpc.sum(g * v), x)           # d/dx (grad . v) = H v
    fg = bpc.function([x], g, target="interpret")
    fhv = bpc.function([x, v], hv, target="interpret")
    rng = np.random.default_rng(0)
    x0, v0 = rng.normal(size=4), rng.normal(size=4)
    eps = 1e-6
    numeric = (fg(x0 + eps * v0) - fg(x0 - eps * v0)) / (2 * eps)
    np.testing.assert_allclose(fhv(x0, v0), numeric, rtol=1e-6, atol=1e-8)


def _mlp(seed=0):
    x = bpc.input("x", (None, 64))
    y = bpc.input("y", (None,), dtype="int64")
    W1 = bpc.param("W1", (64, 32), init="he_normal", seed=seed)
    b1 = bpc.param("b1", (32,), init="zeros")
    W2 = bpc.param("W2", (32, 10), init="glorot_uniform", seed=seed + 1)
    b2 = bpc.param("b2", (10,), init="zeros")
    loss = bpc.softmax_cross_entropy(bpc.relu(x @ W1 + b1) @ W2 + b2, y)
    return x, y, [W1, b1, W2, b2], loss


def test_mlp_gradients_pass_check_grad():
    x, y, params, loss = _mlp()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 64)).astype(np.float32)
    Y = rng.integers(0, 10, 8)
    report = bpc.check_grad(loss, params, {x: X, y: Y})
    assert report.ok, report


def test_mlp_trains_with_handwritten_sgd_on_the_interpreter():
    x, y, params, loss = _mlp()
    grads = bpc.grad(loss, params)
    step = bpc.function([x, y], loss, target="interpret",
                        updates={p: p - 0.1 * g for p, g in zip(params, grads)})
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(10, 64)).astype(np.float32)
    Y = rng.integers(0, 10, 256)
    X = centers[Y] + 0.3 * rng.normal(size=(256, 64)).astype(np.float32)
    losses = [float(step(X, Y)) for _ in range(30)]
    assert losses[-1] < 0.2 * losses[0]

"""conv2d, pooling and their gradients (bpc/ops/conv.py) against an
independent reference written here as plain loops on every target (cuda
under the simulator), against finite differences (first and second order,
float64), and their shape errors."""
import itertools

import numpy as np
import pytest

import bpc
from bpc.errors import ShapeError
from conftest import TARGETS


def reference_conv(x, w, stride, padding, dilation, groups):
    """y[n, o, p, q] = sum_{c, i, j} w[o, c, i, j] * x[n, g(o) * C/G + c, p*s - pad + i*d, q*s - pad + j*d]."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    OH, OW = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((N, O, OH, OW))
    for n, o, p, q in itertools.product(range(N), range(O), range(OH), range(OW)):
        c0 = (o // (O // groups)) * Cg
        for c, i, j in itertools.product(range(Cg), range(kh), range(kw)):
            h, v = p * sh - ph + i * dh, q * sw - pw + j * dw
            if 0 <= h < H and 0 <= v < W:
                y[n, o, p, q] += w[o, c, i, j] * x[n, c0 + c, h, v]
    return y


def reference_grads(x, w, g, *geometry):
    """The gradients of sum(conv(x, w) * g) for x and w, by linearity: the
    convolution of each basis element (small sizes only)."""
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for idx in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[idx] = 1.0
        dx[idx] = np.sum(reference_conv(e, w, *geometry) * g)
    for idx in np.ndindex(*w.shape):
        e = np.zeros_like(w)
        e[idx] = 1.0
        dw[idx] = np.sum(reference_conv(x, e, *geometry) * g)
    return dx, dw


def random_case(rng):
    groups = int(rng.choice([1, 2]))
    C, O = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
    H = dilation[0] * (kh - 1) + 1 + int(rng.integers(0, 4))
    W = dilation[1] * (kw - 1) + 1 + int(rng.integers(0, 4))
    return dict(C=C, O=O, H=H, W=W, k=(kh, kw), stride=stride, padding=padding, dilation=dilation, groups=groups)


CASES = [random_case(np.random.default_rng(seed)) for seed in range(5)] + [
    dict(C=1, O=2, H=5, W=4, k=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1),   # odd sizes
    dict(C=4, O=4, H=6, W=7, k=(2, 3), stride=(2, 3), padding=(0, 1), dilation=(2, 1), groups=4)]   # depthwise


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_conv2d_and_its_gradients_match_a_loop_reference(target, case):
    c = CASES[case]
    rng = np.random.default_rng(case)
    N = 1 if case % 2 else 3                       # batch 1 included
    X = rng.normal(size=(N, c["C"], c["H"], c["W"]))
    Wt = rng.normal(size=(c["O"], c["C"] // c["groups"]) + c["k"])
    geometry = (c["stride"], c["padding"], c["dilation"], c["groups"])
    want = reference_conv(X, Wt, *geometry)
    G = rng.normal(size=want.shape)
    want_dx, want_dw = reference_grads(X, Wt, G, *geometry)

    x = bpc.input("x", (None, c["C"], c["H"], c["W"]), dtype="float64")
    w = bpc.input("w", Wt.shape, dtype="float64")
    g = bpc.input("g", (None,) + want.shape[1:], dtype="float64")
    y = bpc.conv2d(x, w, stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"])
    dx, dw = bpc.grad(bpc.sum(y * g), [x, w])
    f = bpc.function([x, w, g], [y, dx, dw], target=target)
    for got, ref in zip(f(X, Wt, G), (want, want_dx, want_dw)):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_gradients_of_every_order_match_finite_differences():
    """The three conv ops are each other's gradients: first- and
    second-order gradients through a strided, dilated, grouped, padded
    convolution check against central differences."""
    rng = np.random.default_rng(7)
    x = bpc.input("x", (None, 2, 6, 5), dtype="float64")
    w = bpc.param("w", rng.normal(size=(4, 1, 2, 3)))
    y = bpc.conv2d(x, w, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    loss = bpc.sum(bpc.tanh(y) * y)
    X = rng.normal(size=(2, 2, 6, 5))
    assert bpc.check_grad(loss, [x, w], {x: X}).ok
    gx, gw = bpc.grad(loss, [x, w])
    assert bpc.check_grad(bpc.sum(gx * gx) + bpc.sum(gw * gw), [x, w], {x: X}).ok


def test_float32_training_step_on_cpu_matches_the_interpreter():
    """Two conv layers with a ReLU between, SGD on both kernels (check=True
    compares outputs and updated params with the interpreter every call),
    serial and parallel kernels."""
    for parallel in (False, True):
        x = bpc.input("x", (None, 1, 9, 9))
        w1 = bpc.param("w1", (3, 1, 3, 3), init="glorot_uniform", seed=1)
        w2 = bpc.param("w2", (2, 3, 3, 3), init="glorot_uniform", seed=2)
        y = bpc.conv2d(bpc.relu(bpc.conv2d(x, w1, padding="same")), w2, stride=2)
        loss = bpc.mean(y * y)
        g1, g2 = bpc.grad(loss, [w1, w2])
        f = bpc.function([x], loss, updates={w1: w1 - 0.1 * g1, w2: w2 - 0.1 * g2}, target="cpu",
                         parallel=parallel, check=True)
        X = np.random.default_rng(3).normal(size=(5, 1, 9, 9)).astype(np.float32)
        losses = [float(f(X)) for _ in range(3)]
        assert losses[2] < losses[0]


@pytest.mark.parametrize("make, message", [
    (lambda x: bpc.conv2d(x, np.ones((2, 3, 3, 3), np.float32)), "weight has 3 input channels per group"),
    (lambda x: bpc.conv2d(x, np.ones((2, 2, 9, 3), np.float32)), "does not fit the 5x5 input"),
    (lambda x: bpc.conv2d(x, np.ones((3, 1, 3, 3), np.float32), groups=2), "groups=2 must divide"),
    (lambda x: bpc.conv2d(x, np.ones((2, 2, 3, 3), np.float32), stride=2, padding="same"), "needs stride 1"),
    (lambda x: bpc.conv2d(x, np.ones((2, 2, 2, 2), np.float32), padding="same"), "uneven padding"),
    (lambda x: bpc.conv2d(x, np.ones((2, 2, 3, 3), np.float32), padding="full"), "padding must be"),
    (lambda x: bpc.conv2d(x, np.ones((2, 2, 3, 3), np.float32), stride=0), "must be positive"),
    (lambda x: bpc.conv2d(bpc.sum(x, axis=1), np.ones((2, 2, 3, 3), np.float32)), "expects 4-d"),
])
def test_shape_errors_name_the_problem_and_the_users_line(make, message):
    x = bpc.input("x", (None, 2, 5, 5))
    with pytest.raises(ShapeError, match=rf"conv2d: .*{message}.*test_conv\.py"):
        make(x)


def reference_max_pool(x, size, stride, padding):
    """Max pooling and the position each window takes (its first maximum
    inside the image, NaN counting as the maximum), by plain loops."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = size, stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y, where = np.zeros((N, C, OH, OW)), {}
    for n, c, p, q in itertools.product(range(N), range(C), range(OH), range(OW)):
        best = None
        for i, j in itertools.product(range(kh), range(kw)):
            h, v = p * sh - ph + i, q * sw - pw + j
            if 0 <= h < H and 0 <= v < W:
                val = x[n, c, h, v]
                if best is None or val > best or (np.isnan(val) and not np.isnan(best)):
                    best, where[n, c, p, q] = val, (h, v)
        y[n, c, p, q] = best
    return y, where


POOLS = [((2, 2), (2, 2), (0, 0)), ((3, 2), (1, 2), (1, 1)), ((3, 3), (2, 2), (1, 0))]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("pool", range(len(POOLS)))
def test_pooling_and_its_gradients_match_a_loop_reference(target, pool):
    """Max pooling (with ties, -inf and NaN in the input) and average
    pooling, and their gradients, on odd sizes and batch 1."""
    size, stride, padding = POOLS[pool]
    rng = np.random.default_rng(pool)
    N = 1 if pool % 2 else 2
    X = rng.integers(-3, 3, size=(N, 2, 7, 5)).astype(np.float64)   # small integers: many ties
    X[0, 0, 0, :] = -np.inf
    X[0, 1, 3, 2] = np.nan
    x = bpc.input("x", (None, 2, 7, 5), dtype="float64")
    ymax = bpc.max_pool2d(x, size, stride, padding)
    yavg = bpc.avg_pool2d(x, size, stride, padding)
    g = bpc.input("g", (None,) + ymax.shape[1:], dtype="float64")
    dmax, = bpc.grad(bpc.sum(ymax * g), [x])
    davg, = bpc.grad(bpc.sum(yavg * g), [x])
    want, where = reference_max_pool(X, size, stride, padding)
    G = rng.normal(size=want.shape)
    want_dmax = np.zeros_like(X)
    for (n, c, p, q), (h, v) in where.items():
        want_dmax[n, c, h, v] += G[n, c, p, q]
    Xf = np.nan_to_num(X, neginf=0.0, nan=0.0)     # average pooling: finite values only
    area = size[0] * size[1]
    want_avg = reference_conv(Xf, np.ones((2, 1) + size) / area, stride, padding, (1, 1), 2)
    want_davg, _ = reference_grads(Xf, np.ones((2, 1) + size) / area, G, stride, padding, (1, 1), 2)
    f = bpc.function([x, g], [ymax, dmax], target=target)
    got, got_d = f(X, G)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_d, want_dmax, rtol=1e-12)
    f = bpc.function([x, g], [yavg, davg], target=target)
    got, got_d = f(Xf, G)
    np.testing.assert_allclose(got, want_avg, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_d, want_davg, rtol=1e-12, atol=1e-12)


def test_lenet_style_stack_checks_against_finite_differences_and_the_interpreter():
    """conv - relu - max pool - conv - avg pool - flatten - dense: gradients
    for every weight against central differences (float64), and one float32
    SGD step on cpu against the interpreter (check=True)."""
    rng = np.random.default_rng(5)
    for dtype, target in (("float64", "interpret"), ("float32", "cpu")):
        x = bpc.input("x", (None, 1, 10, 10), dtype=dtype)
        w1 = bpc.param("w1", rng.normal(size=(3, 1, 3, 3)).astype(dtype))
        w2 = bpc.param("w2", rng.normal(size=(4, 3, 2, 2)).astype(dtype) * 0.5)
        d = bpc.param("d", rng.normal(size=(4 * 2 * 2, 3)).astype(dtype) * 0.3)
        h = bpc.max_pool2d(bpc.relu(bpc.conv2d(x, w1, padding=1)), 2)
        h = bpc.avg_pool2d(bpc.conv2d(h, w2), 2)
        loss = bpc.sum(bpc.tanh(bpc.flatten(bpc.pad(h, 0)) @ d))
        X = rng.normal(size=(3, 1, 10, 10)).astype(dtype)
        if dtype == "float64":
            assert bpc.check_grad(loss, [w1, w2, d], {x: X}).ok
        else:
            grads = bpc.grad(loss, [w1, w2, d])
            f = bpc.function([x], loss, updates={p: p - 0.01 * gr for p, gr in zip([w1, w2, d], grads)},
                             target=target, check=True)
            for _ in range(2):
                f(X)


def test_pad_and_flatten():
    x = bpc.input("x", (None, 2, 3, 4), dtype="float64")
    X = np.random.default_rng(0).normal(size=(2, 2, 3, 4))
    f = bpc.function([x], [bpc.pad(x, (1, 2)), bpc.flatten(x)], target="interpret")
    padded, flat = f(X)
    np.testing.assert_array_equal(padded, np.pad(X, ((0, 0), (0, 0), (1, 1), (2, 2))))
    np.testing.assert_array_equal(flat, X.reshape(2, 24))


@pytest.mark.parametrize("make, message", [
    (lambda x: bpc.max_pool2d(x, 6), "does not fit the 5x5 input"),
    (lambda x: bpc.max_pool2d(x, 2, padding=2), "at most half the window"),
    (lambda x: bpc.avg_pool2d(x, 0), "must be positive"),
    (lambda x: bpc.max_pool2d(bpc.sum(x, axis=1), 2), "expects a 4-d NCHW input"),
])
def test_pooling_shape_errors_name_the_users_line(make, message):
    x = bpc.input("x", (None, 2, 5, 5))
    with pytest.raises(ShapeError, match=rf"pool2d: .*{message}.*test_conv\.py"):
        make(x)


def test_cpu_convolutions_share_one_scratch_matrix_of_columns():
    """The cpu convolution kernels lay out one image's columns (K x P) in a
    workspace scratch array, allocated once and shared by the forward
    kernel and both gradients (a group of 4 channels, so K = 4 = O)."""
    x = bpc.input("x", (None, 1, 5, 5), dtype="float64")
    w = bpc.input("w", (4, 1, 2, 2), dtype="float64")
    y = bpc.conv2d(x, w)
    f = bpc.function([x, w], [y, *bpc.grad(bpc.sum(y * y), [x, w])], target="cpu", check=True)
    rng = np.random.default_rng(0)
    X, Wt = rng.normal(size=(3, 1, 5, 5)), rng.normal(size=(4, 1, 2, 2))
    np.testing.assert_allclose(f(X, Wt)[0], reference_conv(X, Wt, (1, 1), (0, 0), (1, 1), 1), rtol=1e-12)
    assert f.backend._scratch_specs == [((4 * 4 * 4,), np.dtype("float64"))]

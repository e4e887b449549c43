"""Layers: Dense and Sequential against NumPy, dropout in training and
inference, the L2 penalty, and errors."""
import numpy as np
import pytest

import bpc
from bpc import nn


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_dense_and_sequential_match_numpy_and_l2_penalty(target):
    model = nn.Sequential([
        nn.Dense(3, 5, "tanh", seed=0, name="a", dtype="float64"),
        nn.Dense(5, 4, "relu", seed=1, name="b", dtype="float64"),
        nn.Dense(4, 2, "sigmoid", seed=2, name="c", dtype="float64"),
    ])
    for layer in model.layers:   # non-zero biases, so they are tested too
        layer.b.value = np.linspace(-0.5, 0.5, layer.out_features)
    x = bpc.input("x", (None, 3), dtype="float64")
    penalty = nn.l2_penalty(model.params, 0.01)
    W_a = model.layers[0].W
    f = bpc.function([x], [model(x), penalty, bpc.grad(penalty, W_a)], target=target)
    X = np.random.default_rng(0).normal(size=(7, 3))
    out, pen, g = f(X)

    h = X
    for layer, act in zip(model.layers, (np.tanh, lambda z: np.maximum(z, 0), _sigmoid)):
        h = act(h @ layer.W.value + layer.b.value)
    np.testing.assert_allclose(out, h, rtol=1e-10)
    np.testing.assert_allclose(pen, 0.01 * sum(np.sum(p.value ** 2) for p in model.params), rtol=1e-10)
    np.testing.assert_allclose(g, 0.02 * W_a.value, rtol=1e-10)


def test_dense_params_names_and_initializers():
    d = nn.Dense(64, 32, "relu", seed=0, name="hidden")
    assert [p.name for p in d.params] == ["hidden_W", "hidden_b"]
    assert d.W.shape == (64, 32) and d.b.shape == (32,) and np.all(d.b.value == 0)
    # he_normal for relu: std sqrt(2 / fan_in)
    assert d.W.value.std() == pytest.approx(np.sqrt(2 / 64), rel=0.1)
    lin = nn.Dense(64, 32, seed=0)
    limit = np.sqrt(6 / (64 + 32))  # glorot_uniform otherwise
    assert np.abs(lin.W.value).max() <= limit and lin.W.value.std() == pytest.approx(limit / np.sqrt(3), rel=0.1)
    same = nn.Dense(64, 32, seed=0)
    assert np.array_equal(same.W.value, lin.W.value)          # deterministic for a seed
    assert lin.name != same.name                              # distinct default names
    assert nn.Dense(2, 2, bias=False).params[0].shape == (2, 2) and len(nn.Dense(2, 2, bias=False).params) == 1


def test_sequential_keys_params_and_plain_functions():
    model = nn.Sequential([nn.Dense(4, 8, seed=0, name="l1"), bpc.relu, nn.Dropout(0.5, seed=3, name="drop"),
                           nn.Dense(8, 2, seed=1, name="l2")])
    assert list(model.named_params()) == ["0.W", "0.b", "3.W", "3.b"]
    assert [p.name for p in model.params] == ["l1_W", "l1_b", "l2_W", "l2_b"]
    assert list(model.named_state()) == ["2.counter"]
    x = bpc.input("x", (None, 4))
    assert model(x, training=False).shape == (None, 2)
    assert model.logits(x, training=True).shape == (None, 2)


def test_dropout_training_and_inference(target):
    rate = 0.3
    x = bpc.input("x", (None, 1000))
    d1, d2, d3 = nn.Dropout(rate, seed=7), nn.Dropout(rate, seed=7), nn.Dropout(rate, seed=8)
    assert d1(x, training=False) is x                 # inference: the identity, no node at all
    f = bpc.function([x], [d1(x, training=True), d2(x, training=True), d3(x, training=True)], target=target)
    X = np.ones((4, 1000), dtype=np.float32)
    a1, a2, a3 = f(X)
    b1, _, _ = f(X)

    zero_fraction = np.mean(a1 == 0)
    assert abs(zero_fraction - rate) < 0.03, zero_fraction
    kept = a1[a1 != 0]
    np.testing.assert_allclose(kept, 1.0 / (1.0 - rate), rtol=1e-6)   # the rest scaled by 1/(1-rate)
    assert np.array_equal(a1, a2)                     # same seed, same masks
    assert not np.array_equal(a1, a3)                 # another seed, other masks
    assert not np.array_equal(a1, b1)                 # the mask changes every step
    assert abs(np.mean(b1 == 0) - rate) < 0.03
    assert int(d1.named_state()["counter"].value) == 2    # the counter advanced once per call

    # A training graph built again continues the layer's mask sequence.
    f_again = bpc.function([x], d1(x, training=True), target=target)
    assert int(d1.named_state()["counter"].value) == 2
    c1 = f_again(X)
    assert not np.array_equal(c1, a1) and not np.array_equal(c1, b1)


def test_predict_runs_the_inference_graph(target):
    model = nn.Sequential([nn.Dense(3, 4, "relu", seed=0), nn.Dropout(0.5, seed=1), nn.Dense(4, 2, seed=2)])
    X = np.random.default_rng(1).normal(size=(10, 3))
    out = model.predict(X, batch_size=4, target=target)   # 3 chunks, one compiled function
    first, _, last = model.layers
    want = np.maximum(X.astype(np.float32) @ first.W.value + first.b.value, 0) @ last.W.value + last.b.value
    np.testing.assert_allclose(out, want, rtol=1e-5)
    assert len(model._predict_fns) == 1
    np.testing.assert_array_equal(model.predict(X, target=target), out)   # no dropout at inference


@pytest.mark.parametrize("make, error, message", [
    (lambda: nn.Dense(3, 0), ValueError, "out_features must be a positive int"),
    (lambda: nn.Dense(3, 2, activation="swish"), ValueError, "unknown activation 'swish'"),
    (lambda: nn.Dense(3, 2, init="magic"), bpc.ShapeError, "unknown initializer 'magic'"),
    (lambda: nn.Dense(3, 2, name="my layer"), ValueError, "name must be a Python identifier"),
    (lambda: nn.Dropout(1.0), ValueError, r"rate must be in \[0, 1\)"),
    (lambda: nn.Sequential([]), ValueError, "at least one layer"),
    (lambda: nn.Sequential([nn.Dense(2, 2), 3]), TypeError, "layer 1 is a int"),
    (lambda: nn.l2_penalty([], 0.1), ValueError, "no parameters"),
    (lambda: nn.l2_penalty([bpc.param("p", np.ones(2))], -1.0), ValueError, r"coeff must be in \[0, inf\]"),
])
def test_bad_layer_arguments_raise(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_dense_applies_to_every_position_of_a_sequence(target):
    """Dense over (batch, T, in) is the same layer at each of the T
    positions: forward and gradients match NumPy on every target."""
    layer = nn.Dense(4, 3, activation="tanh", seed=0, dtype="float64")
    x = bpc.input("x", (None, 5, 4), dtype="float64")
    y = layer(x)
    assert y.shape == (None, 5, 3)
    f = bpc.function([x], [y, *bpc.grad(bpc.sum(y * y), layer.params)], target=target)
    X = np.random.default_rng(0).normal(size=(2, 5, 4))
    W, b = layer.W.value, layer.b.value
    h = np.tanh(X @ W + b)
    g = 2 * h * (1 - h * h)
    for got, want in zip(f(X), [h, np.einsum("ntk,nto->ko", X, g), g.sum((0, 1))]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_wrong_input_shape_names_the_layer():
    model = nn.Sequential([nn.Dense(64, 10, name="first")])
    x = bpc.input("x", (None, 32))
    with pytest.raises(bpc.ShapeError, match=r"Dense 'first' expects a \(batch, 64\) input .*got 'x' of shape \(N, 32\)"):
        model(x)
    with pytest.raises(bpc.ShapeError, match=r"Dense 'first' .*got 'v' of shape \(64,\)"):
        model(bpc.input("v", (64,)))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        model.predict(np.ones((2, 64)), batch_size=0)


def small_cnn(seed=0):
    return nn.Sequential([nn.Conv2d(1, 3, 3, padding="same", activation="relu", seed=seed, name="c1"),
                          nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, groups=1, seed=seed + 1, name="c2"),
                          nn.AvgPool2d(2, stride=1), nn.Flatten(), nn.Dense(4, 3, seed=seed + 2, name="out")])


def _np_conv(x, w, b, pad=0):
    """A convolution in NumPy for the layer test: sliding windows and einsum."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", windows, w) + b[:, None, None]


def _np_pool(x, size, stride, reduce):
    windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(2, 3))[:, :, ::stride, ::stride]
    return reduce(windows, axis=(4, 5))


@pytest.mark.parametrize("target", ["interpret", "cpu"])
def test_conv_layers_match_numpy_and_train_with_fit_predict_and_checkpoints(tmp_path, target):
    """Conv2d (+ bias, activation), pooling and Flatten mixed with Dense:
    the output matches a NumPy computation of the same layers, fit lowers
    the loss, predict runs the inference graph, and a checkpoint restores
    every conv parameter into a rebuilt model."""
    model = small_cnn()
    assert list(model.named_params()) == ["0.W", "0.b", "2.W", "2.b", "5.W", "5.b"]
    assert model.layers[0].W.shape == (3, 1, 3, 3)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 1, 8, 8)).astype(np.float32)
    Y = rng.integers(0, 3, 12)
    for p in model.params:
        p.value = rng.normal(size=p.shape).astype(np.float32) * 0.3
    P = {k: v.value.astype(np.float64) for k, v in model.named_params().items()}
    h = _np_pool(np.maximum(_np_conv(X, P["0.W"], P["0.b"], pad=1), 0), 2, 2, np.max)
    h = _np_pool(_np_conv(h, P["2.W"], P["2.b"]), 2, 1, np.mean)
    want = h.reshape(12, -1) @ P["5.W"] + P["5.b"]
    np.testing.assert_allclose(model.predict(X, target=target), want, rtol=1e-4, atol=1e-5)

    history = bpc.fit(model, X, Y, epochs=4, batch_size=4, optimizer="adam", target=target, progress=False)
    assert history["loss"][-1] < history["loss"][0]
    path = tmp_path / "cnn.npz"
    bpc.save_checkpoint(path, model.params)
    again = small_cnn(seed=10)
    bpc.load_checkpoint(path, again.params)
    np.testing.assert_allclose(again.predict(X, target=target), model.predict(X, target=target), rtol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: nn.Conv2d(3, 4, 3, groups=2), "groups=2 must divide"),
    (lambda: nn.Conv2d(0, 4, 3), "in_channels must be a positive int"),
    (lambda: nn.Conv2d(1, 4, 3, activation="swish"), "unknown activation 'swish'"),
])
def test_bad_conv_layer_arguments_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_conv_layers_name_themselves_on_a_wrong_input():
    x = bpc.input("x", (None, 2, 8, 8))
    with pytest.raises(bpc.ShapeError, match=r"Conv2d 'c1' expects a \(batch, 1, height, width\) input, got 'x'"):
        nn.Conv2d(1, 2, 3, name="c1")(x)
    with pytest.raises(bpc.ShapeError, match=r"MaxPool2d 'p' expects a \(batch, channels, height, width\)"):
        nn.MaxPool2d(2, name="p")(bpc.input("v", (None, 8)))


class _MeanOverTime(nn.Module):
    def __call__(self, x, training=False):
        return bpc.mean(x, axis=1)


def test_embedding_model_learns_which_token_a_sequence_holds():
    """Embedding -> mean over the tokens -> Dense, trained by fit on int64
    token ids (the input dtype comes from the first layer): learns whether
    token 3 occurs; predict takes ids too; a frozen table stays as given."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 8, size=(400, 6))
    X[X == 3] = 4
    Y = rng.integers(0, 2, size=400)
    X[Y == 1, rng.integers(0, 6, size=int(Y.sum()))] = 3
    model = nn.Sequential([nn.Embedding(8, 5, seed=1), _MeanOverTime(), nn.Dense(5, 2, seed=2)])
    assert model.input_dtype == np.int64 and model.dtype == np.float32
    history = bpc.fit(model, X, Y, epochs=30, batch_size=40, optimizer=bpc.optim.Adam(0.05), target="cpu",
                      progress=False)
    assert history.history["accuracy"][-1] > 0.95
    assert (model.predict(X[:50], target="cpu").argmax(1) == Y[:50]).mean() > 0.95
    table = np.arange(10.0).reshape(5, 2)
    frozen = nn.Embedding(5, 2, weights=table, trainable=False)
    assert frozen.params == []
    np.testing.assert_array_equal(nn.Sequential([frozen]).predict(np.array([[4, 0]])), [table[[4, 0]]])
    with pytest.raises(bpc.ShapeError, match=r"Embedding 'e' expects integer token ids"):
        nn.Embedding(5, 2, name="e")(bpc.input("x", (None, 3)))
    with pytest.raises(bpc.ShapeError, match=r"weights have shape \(5, 2\), expected \(4, 2\)"):
        nn.Embedding(4, 2, weights=table)


def test_layer_norm_matches_numpy_and_finite_differences(target):
    """Forward against NumPy over the last axis of a (batch, T, dim) input;
    gradients for input, gain and bias against central differences."""
    layer = nn.LayerNorm(6, eps=1e-3, dtype="float64")
    rng = np.random.default_rng(0)
    layer.gain.value = rng.normal(size=6)
    layer.bias.value = rng.normal(size=6)
    x = bpc.input("x", (None, 3, 6), dtype="float64")
    X = rng.normal(size=(2, 3, 6))
    y = layer(x)
    got = bpc.function([x], y, target=target)(X)
    mu, var = X.mean(-1, keepdims=True), X.var(-1, keepdims=True)
    np.testing.assert_allclose(got, (X - mu) / np.sqrt(var + 1e-3) * layer.gain.value + layer.bias.value,
                               rtol=1e-10)
    cost = bpc.sum(y * bpc.constant(rng.normal(size=(3, 6))))
    report = bpc.check_grad(cost, [x] + layer.params, {x: X})   # the graph, by finite differences
    assert report.ok, report
    grads = bpc.grad(cost, [x] + layer.params)
    want = bpc.function([x], grads, target="interpret")(X)
    for g, w in zip(bpc.function([x], grads, target=target)(X), want):   # the target runs it
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)
    with pytest.raises(bpc.ShapeError, match=r"LayerNorm 'ln' normalizes a last axis of 4"):
        nn.LayerNorm(4, name="ln")(x)

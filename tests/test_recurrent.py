"""Recurrent cells (RNNCell, LSTMCell, GRUCell) with PyTorch's parameter
layout: a few steps unrolled over a sequence against NumPy references,
finite differences, every target, and PyTorch itself where installed."""
import numpy as np
import pytest

import bpc
from bpc import nn

STEPS, IN, HIDDEN = 3, 4, 5


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def np_cell(kind, p, x, state):
    """The published cell equations (PyTorch's documentation), in NumPy."""
    h = state[0] if kind == "lstm" else state
    gi = x @ p["weight_ih"].T + p["bias_ih"]
    gh = h @ p["weight_hh"].T + p["bias_hh"]
    if kind == "rnn":
        return np.tanh(gi + gh)
    if kind == "lstm":
        i, f, g, o = np.split(gi + gh, 4, axis=1)
        c = sigmoid(f) * state[1] + sigmoid(i) * np.tanh(g)
        return sigmoid(o) * np.tanh(c), c
    (xr, xz, xn), (hr, hz, hn) = np.split(gi, 3, axis=1), np.split(gh, 3, axis=1)
    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    return (1 - z) * n + z * h


CELLS = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}


def unrolled(kind, dtype, seed=0):
    """The cell run over STEPS slices x[:, t] of a (batch, STEPS, IN) input
    from a zero state; returns (cell, x, the last hidden state, all hidden states)."""
    cell = CELLS[kind](IN, HIDDEN, seed=seed, dtype=dtype)
    x = bpc.input("x", (None, STEPS, IN), dtype=dtype)
    h = bpc.input("h0", (None, HIDDEN), dtype=dtype)
    state = (h, h * 0.5) if kind == "lstm" else h
    hs = []
    for t in range(STEPS):
        state = cell(x[:, t], state)
        hs.append(state[0] if kind == "lstm" else state)
    return cell, x, h, bpc.stack(hs, axis=1)


def reference(kind, cell, X, H0):
    p = {k: t.value.astype(np.float64) for k, t in cell.named_params().items()}
    state = (H0, H0 * 0.5) if kind == "lstm" else H0
    hs = []
    for t in range(STEPS):
        state = np_cell(kind, p, X[:, t], state)
        hs.append(state[0] if kind == "lstm" else state)
    return np.stack(hs, axis=1)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_unrolled_cells_match_numpy_and_finite_differences(kind, target):
    cell, x, h0, hs = unrolled(kind, "float64")
    rng = np.random.default_rng(1)
    X, H0 = rng.normal(size=(2, STEPS, IN)), rng.normal(size=(2, HIDDEN)) * 0.5
    cost = bpc.sum(hs * bpc.constant(rng.normal(size=(STEPS, HIDDEN))))
    wrt = [x, h0] + cell.params
    f = bpc.function([x, h0], [hs, *bpc.grad(cost, wrt)], target=target)
    got = f(X, H0)
    np.testing.assert_allclose(got[0], reference(kind, cell, X, H0), rtol=1e-10, atol=1e-12)
    if target == "interpret":
        report = bpc.check_grad(cost, wrt, {x: X, h0: H0})
        assert report.ok, report
    else:
        want = bpc.function([x, h0], bpc.grad(cost, wrt), target="interpret")(X, H0)
        for g, w in zip(got[1:], want):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cells_match_pytorch_with_the_same_weights(kind):
    """float32 outputs and gradients (input, state, every weight) against
    torch.nn.{RNN,LSTM,GRU}Cell loaded with the same parameters, to 1e-5."""
    torch = pytest.importorskip("torch")
    cell, x, h0, hs = unrolled(kind, "float32")
    rng = np.random.default_rng(2)
    X, H0 = rng.normal(size=(3, STEPS, IN)).astype(np.float32), rng.normal(size=(3, HIDDEN)).astype(np.float32)
    W = rng.normal(size=(STEPS, HIDDEN)).astype(np.float32)
    wrt = [x, h0] + cell.params
    f = bpc.function([x, h0], [hs, *bpc.grad(bpc.sum(hs * W), wrt)], target="cpu")
    got = f(X, H0)

    tcell = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[kind](IN, HIDDEN)
    with torch.no_grad():
        for key, t in cell.named_params().items():
            getattr(tcell, key).copy_(torch.from_numpy(t.value))
    tx, th = torch.tensor(X, requires_grad=True), torch.tensor(H0, requires_grad=True)
    state = (th, th * 0.5) if kind == "lstm" else th
    outs = []
    for t in range(STEPS):
        state = tcell(tx[:, t], state)
        outs.append(state[0] if kind == "lstm" else state)
    ths = torch.stack(outs, dim=1)
    (ths * torch.from_numpy(W)).sum().backward()
    want = [ths.detach().numpy(), tx.grad.numpy(), th.grad.numpy()] + [
        getattr(tcell, key).grad.numpy() for key in cell.named_params()]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_cells_name_wrong_shapes():
    cell = nn.LSTMCell(4, 3, name="enc")
    x, h = bpc.input("x", (None, 4)), bpc.input("h", (None, 2))
    with pytest.raises(bpc.ShapeError, match=r"LSTMCell 'enc' expects a \(batch, 3\) state, got 'h' of shape \(N, 2\)"):
        cell(x, (h, h))
    assert [t.name for t in cell.params] == ["enc_weight_ih", "enc_weight_hh", "enc_bias_ih", "enc_bias_hh"]
    assert cell.weight_ih.shape == (12, 4) and cell.weight_hh.shape == (12, 3)


# ----- layers over sequences (bpc.scan) -------------------------------------------

LAYERS = {"rnn": nn.SimpleRNN, "lstm": nn.LSTM, "gru": nn.GRU}
SEQ = 6


def reference_layer(kind, layer, X, mask=None, reverse=False):
    """NumPy: the cell's equations over the steps, the state frozen where
    the mask is 0 (and the output zeroed there)."""
    p = {k: t.value.astype(np.float64) for k, t in layer.named_params().items()}
    N = X.shape[0]
    h = np.zeros((N, HIDDEN))
    state = (h, h) if kind == "lstm" else h
    ys = [None] * X.shape[1]
    for t in (reversed(range(X.shape[1])) if reverse else range(X.shape[1])):
        new = np_cell(kind, p, X[:, t], state)
        m = np.ones((N, 1)) if mask is None else mask[:, t:t + 1]
        if kind == "lstm":
            state = tuple(m * a + (1 - m) * b for a, b in zip(new, state))
            ys[t] = m * new[0]
        else:
            state = m * new + (1 - m) * state
            ys[t] = m * new
    final = state[0] if kind == "lstm" else state
    return np.stack(ys, axis=1), final


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
def test_layers_match_numpy_and_gradients(kind, masked, target):
    """Outputs of every step and the final state against NumPy (float64),
    gradients against finite differences (interpret) or the interpreter."""
    layer = LAYERS[kind](IN, HIDDEN, return_sequences=True, return_state=True, seed=3, dtype="float64",
                        reverse=masked)
    x = bpc.input("x", (None, SEQ, IN), dtype="float64")
    mask = bpc.input("mask", (None, SEQ), dtype="float64") if masked else None
    ys, state = layer(x, mask=mask)
    final = state[0] if kind == "lstm" else state
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3, SEQ, IN))
    M = (np.arange(SEQ)[None, :] < np.array([[6], [2], [4]])).astype(np.float64)
    cost = bpc.sum(ys * bpc.constant(rng.normal(size=(SEQ, HIDDEN)))) + bpc.sum(final * final)
    wrt = [x] + layer.params
    inputs = [x, mask] if masked else [x]
    feeds = [X, M] if masked else [X]
    got = bpc.function(inputs, [ys, final, *bpc.grad(cost, wrt)], target=target)(*feeds)
    want_ys, want_final = reference_layer(kind, layer, X, M if masked else None, reverse=masked)
    np.testing.assert_allclose(got[0], want_ys, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[1], want_final, rtol=1e-10, atol=1e-12)
    if target == "interpret":
        report = bpc.check_grad(cost, wrt, dict(zip(inputs, feeds)))
        assert report.ok, report
    else:
        want = bpc.function(inputs, bpc.grad(cost, wrt), target="interpret")(*feeds)
        for g, w in zip(got[2:], want):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


def test_masked_final_state_is_the_state_at_each_sequences_last_step():
    """Padding after a sequence's end leaves its final state as the state
    after its last real step (PyTorch's packed sequences)."""
    layer = nn.LSTM(IN, HIDDEN, seed=5, dtype="float64")
    x = bpc.input("x", (None, SEQ, IN), dtype="float64")
    mask = bpc.input("mask", (None, SEQ), dtype="float64")
    padded = bpc.function([x, mask], layer(x, mask=mask), target="cpu")
    rng = np.random.default_rng(6)
    X = rng.normal(size=(2, SEQ, IN))
    for length in (1, 3, SEQ):
        M = np.zeros((2, SEQ))
        M[:, :length] = 1.0
        short = bpc.input("s", (None, length, IN), dtype="float64")
        want = bpc.function([short], layer(short), target="interpret")(X[:, :length])
        np.testing.assert_allclose(padded(X, M), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layers_match_pytorch_with_the_same_weights(kind):
    """float32 outputs of every step and the gradients (input and every
    weight) against torch.nn.{RNN,LSTM,GRU} (batch_first) loaded with the
    same parameters, to 1e-5."""
    torch = pytest.importorskip("torch")
    layer = LAYERS[kind](IN, HIDDEN, return_sequences=True, seed=7)
    x = bpc.input("x", (None, SEQ, IN))
    ys = layer(x)
    rng = np.random.default_rng(8)
    X, W = rng.normal(size=(4, SEQ, IN)).astype(np.float32), rng.normal(size=(SEQ, HIDDEN)).astype(np.float32)
    wrt = [x] + layer.params
    got = bpc.function([x], [ys, *bpc.grad(bpc.sum(ys * W), wrt)], target="cpu")(X)
    tlayer = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](IN, HIDDEN, batch_first=True)
    with torch.no_grad():
        for key, t in layer.named_params().items():
            getattr(tlayer, f"{key}_l0").copy_(torch.from_numpy(t.value))
    tx = torch.tensor(X, requires_grad=True)
    tys, _ = tlayer(tx)
    (tys * torch.from_numpy(W)).sum().backward()
    want = [tys.detach().numpy(), tx.grad.numpy()] + [getattr(tlayer, f"{key}_l0").grad.numpy()
                                                       for key in layer.named_params()]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_layers_name_wrong_inputs():
    layer = nn.GRU(IN, HIDDEN, name="enc")
    with pytest.raises(bpc.ShapeError, match=r"GRU 'enc' expects sequences \(batch, time, 4\), got 'x' of shape \(N, 4\)"):
        layer(bpc.input("x", (None, IN)))
    x = bpc.input("x", (None, SEQ, IN))
    with pytest.raises(bpc.ShapeError, match=r"GRU 'enc': the mask must be \(batch, time\) = \(N, 6\)"):
        layer(x, mask=bpc.input("m", (None, SEQ + 1)))
    assert [t.name for t in layer.params] == ["enc_weight_ih", "enc_weight_hh", "enc_bias_ih", "enc_bias_hh"]


def test_a_model_predicts_sequences_of_any_length_with_the_same_compiled_kernels():
    """predict builds one function per input shape; for sequences of 5 and
    50 steps they run the very same compiled kernels (the step's, and loops
    that read the length at run time)."""
    model = nn.Sequential([nn.LSTM(IN, HIDDEN, seed=9), nn.Dense(HIDDEN, 2, seed=10)])
    rng = np.random.default_rng(11)
    for steps in (5, 50):
        X = rng.normal(size=(3, steps, IN)).astype(np.float32)
        np.testing.assert_allclose(model.predict(X, target="cpu"), model.predict(X, target="interpret"),
                                   rtol=1e-5, atol=1e-6)
    fns = [f for (target, shape), f in model._predict_fns.items() if target == "cpu"]
    assert len(fns) == 2 and fns[0].backend.kernel_sources == fns[1].backend.kernel_sources

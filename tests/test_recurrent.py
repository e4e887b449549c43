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

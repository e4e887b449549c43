"""bpc.scan: a loop over time as one node. Each case runs forward against a
NumPy loop and its gradients (a reverse scan derived by the chain rule)
against finite differences, in float64 on every target, and in float32
against the interpreter; the cases cover tuple carries, reverse scans,
several sequences, tuple and absent outputs, time-major input, carries
without a batch axis, closures that are inputs or computed values, integer
sequences read through `take`, and outputs that are placeholders, leaves
or another output."""
import numpy as np
import pytest

import bpc
from conftest import Arg, OpCase, as_list, build_case, check_op, check_float32

T, D, H = 4, 3, 5


def sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def _rnn(x, h0, w, u):
    def step(h, xt):
        h = bpc.tanh(xt @ w + h @ u)
        return h, h
    return list(bpc.scan(step, h0, x))


def _rnn_np(x, h0, w, u):
    h, ys = h0, []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ w + h @ u)
        ys.append(h)
    return [h, np.stack(ys, 1)]


def _lstm(x, h0, w, u):
    def step(carry, xt):
        h, c = carry
        z = xt @ w + h @ u
        i, f, g, o = bpc.split(z, 4, axis=1)
        c = bpc.sigmoid(f) * c + bpc.sigmoid(i) * bpc.tanh(g)
        h = bpc.sigmoid(o) * bpc.tanh(c)
        return (h, c), h * 2.0
    (h, c), ys = bpc.scan(step, (h0, h0 * 0.5), x)
    return [h, c, ys]


def _lstm_np(x, h0, w, u):
    h, c, ys = h0, h0 * 0.5, []
    for t in range(x.shape[1]):
        i, f, g, o = np.split(x[:, t] @ w + h @ u, 4, axis=1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        ys.append(h * 2.0)
    return [h, c, np.stack(ys, 1)]


def _reverse_two(x1, x2, h0):
    def step(h, xs):
        a, b = xs
        h = bpc.tanh(h * a + b)
        return h, (h * b, bpc.sum(h, axis=1))
    h, (ya, yb) = bpc.scan(step, h0, (x1, x2), reverse=True)
    return [h, ya, yb]


def _reverse_two_np(x1, x2, h0):
    h, ya, yb = h0, [None] * T, [None] * T
    for t in reversed(range(T)):
        h = np.tanh(h * x1[:, t] + x2[:, t])
        ya[t], yb[t] = h * x2[:, t], h.sum(axis=1)
    return [h, np.stack(ya, 1), np.stack(yb, 1)]


def _time_major_sum(x, v):
    """Time-major input (axis 0), no outputs, and a carry without a batch
    axis next to one with it."""
    def step(carry, xt):
        s, h = carry
        h = bpc.tanh(h + xt)
        return (s + bpc.sum(h * v, axis=0), h), None
    (s, h), ys = bpc.scan(step, (v * 0.0, bpc.tanh(x[0] * 0.0 + 0.1)), x, axis=0)
    assert ys is None
    return [s, h]


def _time_major_sum_np(x, v):
    s, h = np.zeros(D), np.tanh(x[0] * 0.0 + 0.1)
    for t in range(x.shape[0]):
        h = np.tanh(h + x[t])
        s = s + (h * v).sum(axis=0)
    return [s, h]


def _closure_of_outer_value(x, h0, w):
    """The step reads a value computed outside (per example) and an input."""
    z = bpc.tanh(h0 @ w)

    def step(h, xt):
        h = h * z + xt * w[0]
        return h, h - z
    h, ys = bpc.scan(step, h0, x)
    return [h, ys]


def _closure_of_outer_value_np(x, h0, w):
    z = np.tanh(h0 @ w)
    h, ys = h0, []
    for t in range(x.shape[1]):
        h = h * z + x[:, t] * w[0]
        ys.append(h - z)
    return [h, np.stack(ys, 1)]


def _length_only(h0, a):
    def step(h, _):
        h = h * a + 1.0
        return h, bpc.sum(h, axis=1, keepdims=True)
    h, ys = bpc.scan(step, h0, None, length=T, axis=1)
    return [h, ys]


def _length_only_np(h0, a):
    h, ys = h0, []
    for _ in range(T):
        h = h * a + 1.0
        ys.append(h.sum(axis=1, keepdims=True))
    return [h, np.stack(ys, 1)]


VOCAB = 7


def _token_ids(ids, table, h0, u):
    """Integer sequences: each step embeds its tokens with take."""
    def step(h, tok):
        h = bpc.tanh(bpc.take(table, tok) + h @ u)
        return h, h
    h, ys = bpc.scan(step, h0, ids)
    return [h, ys]


def _token_ids_np(ids, table, h0, u):
    h, ys = h0, []
    for t in range(ids.shape[1]):
        h = np.tanh(table[ids[:, t]] + h @ u)
        ys.append(h)
    return [h, np.stack(ys, 1)]


def _plain_outputs(x, h0, w):
    """Outputs that are the carry itself, the step's input, a leaf."""
    def step(h, xt):
        h = h + xt @ w
        return h, (h, xt, w * 1.0)
    h, (a, b, c) = bpc.scan(step, h0, x)
    return [h, a, b, c]


def _plain_outputs_np(x, h0, w):
    h, a, b = h0, [], []
    for t in range(x.shape[1]):
        h = h + x[:, t] @ w
        a.append(h)
        b.append(x[:, t])
    return [h, np.stack(a, 1), np.stack(b, 1), np.stack([w] * T, 1)]


def _unit(rng, shape):
    return rng.uniform(-0.6, 0.6, shape)


CASES = [
    OpCase("rnn_tanh", _rnn, [Arg("x", (None, T, D)), Arg("h0", (None, H), _unit), Arg("w", (D, H), _unit),
                              Arg("u", (H, H), _unit)], _rnn_np),
    OpCase("lstm_tuple_carry", _lstm, [Arg("x", (None, T, D)), Arg("h0", (None, H), _unit),
                                       Arg("w", (D, 4 * H), _unit), Arg("u", (H, 4 * H), _unit)], _lstm_np),
    OpCase("reverse_two_sequences_tuple_outputs", _reverse_two,
           [Arg("x1", (None, T, H), _unit), Arg("x2", (None, T, H)), Arg("h0", (None, H))], _reverse_two_np),
    OpCase("time_major_carry_without_batch", _time_major_sum, [Arg("x", (T, None, D)), Arg("v", (D,))],
           _time_major_sum_np),
    OpCase("closure_of_outer_value", _closure_of_outer_value,
           [Arg("x", (None, T, H)), Arg("h0", (None, H), _unit), Arg("w", (H, H), _unit)],
           _closure_of_outer_value_np),
    OpCase("length_without_sequences", _length_only, [Arg("h0", (None, H)), Arg("a", (H,), _unit)],
           _length_only_np),
    OpCase("token_ids_through_take", _token_ids,
           [Arg("ids", (None, T), f"labels:{VOCAB}", "int64"), Arg("table", (VOCAB, H)),
            Arg("h0", (None, H), _unit), Arg("u", (H, H), _unit)], _token_ids_np),
    OpCase("outputs_that_are_carry_input_leaf", _plain_outputs,
           [Arg("x", (None, T, D)), Arg("h0", (None, H)), Arg("w", (D, H))], _plain_outputs_np),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scan_forward_and_gradient_float64(case, target):
    """Forward against NumPy, gradients against finite differences. On the
    CUDA simulator (each call runs every step's kernels as Python threads)
    the gradients are held to the interpreter's, which the finite
    differences check here."""
    if target != "cuda":
        check_op(case, target)
        return
    values = case.sample()
    built = build_case(case, target, values)
    outs, cost, grads = built(values)
    for got, want in zip(outs, as_list(case.reference(*[v.copy() for v in values]))):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    _, ref_cost, ref_grads = build_case(case, "interpret", values)(values)
    np.testing.assert_allclose(cost, ref_cost, rtol=1e-12)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_scan_float32_agrees_with_float64(target):
    check_float32([c for c in CASES if c.float32], target)


# ----- errors -------------------------------------------------------------------------

def _rnn_graph(steps=T):
    x = bpc.input("x", (None, steps, D))
    w = bpc.param("w", (D, H), seed=0)
    u = bpc.param("u", (H, H), seed=1)
    h0 = bpc.broadcast_to(bpc.constant(0.0, dtype="float32"), (None, H))
    return x, [w, u], _rnn(x, h0, w, u)


@pytest.mark.parametrize("build, message", [
    (lambda x, h: bpc.scan(lambda c, xt: c, h, x), r"step must return \(new carry, y_t\), a pair"),
    (lambda x, h: bpc.scan(lambda c, xt: ((c, c), None), h, x), r"step returned 2 carries, init has 1"),
    (lambda x, h: bpc.scan(lambda c, xt: (bpc.sum(c, axis=1), None), h, x),
     r"the carry must keep its shape and dtype: carry 0 is float32\(N, 5\), step returned float32\(N,\)"),
    (lambda x, h: bpc.scan(lambda c, xt: (c, None), h, x, axis=0),
     r"the time axis \(0\) of xs\[0\] is the batch dimension"),
    (lambda x, h: bpc.scan(lambda c, xt: (c, None), h, x, length=T + 1), r"xs\[0\] has 4 steps along axis 1, expected 5"),
    (lambda x, h: bpc.scan(lambda c, xt: (c, None), h), r"without xs, scan needs length"),
    (lambda x, h: bpc.scan(lambda c, xt: (c, None), h, x, axis=3), r"xs\[0\] of shape \(N, 4, 3\) has no axis 3"),
    (lambda x, h: bpc.scan(lambda c, xt: (c, None), (), x), r"init must hold at least one tensor"),
])
def test_scan_errors_name_the_problem(build, message):
    x = bpc.input("x", (None, T, D))
    h = bpc.input("h", (None, H))
    with pytest.raises(bpc.ShapeError, match=message):
        build(x, h)


def test_second_order_gradients_through_scan_say_so():
    x, (w, u), (h, ys) = _rnn_graph()
    gw = bpc.grad(bpc.sum(h), w)
    with pytest.raises(bpc.ShapeError, match="second-order gradients through bpc.scan"):
        bpc.grad(bpc.sum(gw * gw), u)


# ----- what is compiled -----------------------------------------------------------------

def _lstm_step_function(steps):
    """An LSTM training step (SGD) over `steps` time steps, on cpu."""
    layer = bpc.nn.LSTM(D, H, seed=0)
    x = bpc.input("x", (None, steps, D))
    loss = bpc.mean(layer(x) ** 2)
    grads = bpc.grad(loss, layer.params)
    return bpc.function([x], loss, updates={p: p - 0.1 * g for p, g in zip(layer.params, grads)}, target="cpu")


def test_the_step_compiles_once_whatever_the_length():
    """The kernels of a scan's step are compiled once and called once per
    time step, and the loops over whole sequences outside it read the
    length at run time: 6 and 40 steps run the very same compiled kernels
    (a new length compiles nothing)."""
    short, long = _lstm_step_function(6), _lstm_step_function(40)
    assert short.backend.kernel_sources == long.backend.kernel_sources
    assert any(" step: " in d for d in short.backend.call_describes)
    assert "run 40 times" in long.backend.source and "run 6 times" in short.backend.source
    assert len(long.backend.call_describes) > len(short.backend.call_describes)
    rng = np.random.default_rng(0)
    for f, steps in ((short, 6), (long, 40)):
        assert np.isfinite(f(rng.normal(size=(3, steps, D)).astype(np.float32)))


def test_the_backward_step_reads_the_saved_gates():
    """The gradient's step reads the values the forward step saved: it
    computes no sigmoid or tanh of its own, and only the chain rule's
    products (h's gradient, and the sums of x_tᵀ g and hᵀ g)."""
    from bpc.passes import optimize
    from bpc.passes.fuse import plan
    from bpc.function import Program
    x, _, (h, ys) = _lstm_graph_for_plan()
    layer_params = [n for n in bpc.graph.traverse.topo_sort([h]) if n.kind == "param"]
    grads = bpc.grad(bpc.sum(h * h), layer_params)
    outs, updates, _ = optimize(grads)
    steps = [k.body for k in plan(Program([x], outs, updates)).kernels if k.form == "scan"]
    assert len(steps) == 2
    forward, backward = steps
    ops_of = lambda step: [n.op.name for k in step.plan.kernels for n in k.nodes]
    assert {"sigmoid", "tanh"} <= set(ops_of(forward))
    assert not {"sigmoid", "tanh", "exp"} & set(ops_of(backward))
    assert ops_of(backward).count("matmul") == 3


def _lstm_graph_for_plan():
    x = bpc.input("x", (None, T, D))
    w = bpc.param("w", (D, 4 * H), seed=0)
    u = bpc.param("u", (H, 4 * H), seed=1)
    h0 = bpc.broadcast_to(bpc.constant(0.0, dtype="float32"), (None, H))
    h, c, ys = _lstm(x, h0, w, u)
    return x, (w, u), (h, ys)


def test_outputs_no_one_reads_are_not_computed():
    from bpc.passes.fuse import plan
    from bpc.function import Program
    x, _, (h, ys) = _rnn_graph()
    (step,) = [k.body for k in plan(Program([x], [h], [])).kernels if k.form == "scan"]
    assert len(step.program.outputs) == 1        # the new carry; the unread ys are not written
    (step,) = [k.body for k in plan(Program([x], [h, ys], [])).kernels if k.form == "scan"]
    assert len(step.program.outputs) == 2


def test_to_text_lists_the_step_under_the_scan():
    x, (w, u), (h, ys) = _rnn_graph()
    text = bpc.to_text(bpc.grad(bpc.sum(h), u))
    assert "= scan " in text and "step, run 4 times:" in text and "step, run 4 times in reverse:" in text
    assert "step returns: new carries" in text and "summed grad_sum" in text


def test_a_scan_inside_a_scan_runs_on_the_interpreter_and_says_so_elsewhere():
    x = bpc.input("x", (None, T, D), dtype="float64")

    def outer(s, xt):
        inner, _ = bpc.scan(lambda c, _: (c * 0.5 + xt, None), s, None, length=2)
        return inner, None
    s, _ = bpc.scan(outer, x[:, 0] * 0.0, x)
    X = np.random.default_rng(0).normal(size=(2, T, D))
    want = np.zeros((2, D))
    for t in range(T):
        for _ in range(2):
            want = want * 0.5 + X[:, t]
    np.testing.assert_allclose(bpc.function([x], s, target="interpret")(X), want, rtol=1e-12)
    report = bpc.check_grad(bpc.sum(s * s), [x], {x: X})
    assert report.ok, report
    with pytest.raises(bpc.CompileError, match="a scan inside a scan's step runs on target 'interpret' only"):
        bpc.function([x], s, target="cpu")

"""Compiled targets return exactly what the interpreter returns.

Each test is a program that a compiled target once got wrong: buffers
reused under live views, outputs that are views of params, updates that
read each other, user names that leaked into generated code, concurrent
calls, params shared between targets, the numerics check and the
interpreter-beside-the-target check (`check=True`).
"""
import threading

import numpy as np
import pytest

import bpc
from conftest import TARGETS

COMPILED = [t for t in TARGETS if t != "interpret"]


def run_on(target, build, feeds, steps=1):
    """Build a program, run it `steps` times; returns (outputs per step,
    param values after each step)."""
    inputs, outputs, updates, params = build()
    f = bpc.function(inputs, outputs, updates=updates, target=target)
    outs, values = [], []
    for _ in range(steps):
        outs.append([np.array(o) for o in f(*feeds)])
        values.append([np.array(p.value) for p in params])
    return outs, values


def assert_same_as_interpreter(target, build, feeds, steps=1, rtol=1e-6):
    want = run_on("interpret", build, feeds, steps)
    got = run_on(target, build, feeds, steps)
    for step, (w_outs, g_outs) in enumerate(zip(want[0], got[0])):
        for k, (w, g) in enumerate(zip(w_outs, g_outs)):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-7, err_msg=f"step {step}, output {k}")
    for step, (w_vals, g_vals) in enumerate(zip(want[1], got[1])):
        for k, (w, g) in enumerate(zip(w_vals, g_vals)):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-7, err_msg=f"step {step}, param {k}")
    return got


def in_threads(worker, n):
    """Run worker(0) ... worker(n - 1) at once, each in its own thread; the
    exceptions they raised."""
    errors = []

    def run(k):
        try:
            worker(k)
        except Exception as e:     # collected: an assert in a thread would go unseen
            errors.append(e)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


# ----- buffers under live views -----------------------------------------------------------

def test_worked_example_returns_every_gradient_with_the_forward_values(target):
    """The 1-1-1 sigmoid network of the worked example: b1's gradient was
    once the buffer that w2's gradient overwrote."""
    def build():
        x, y = bpc.input("x", (None, 1)), bpc.input("y", (None, 1))
        w1, b1 = bpc.param("w1", np.ones((1, 1))), bpc.param("b1", np.zeros(1))
        w2, b2 = bpc.param("w2", -np.ones((1, 1))), bpc.param("b2", np.zeros(1))
        out = bpc.sigmoid(bpc.sigmoid(x @ w1 + b1) @ w2 + b2)
        loss = bpc.sum((out - y) ** 2)
        return [x, y], [loss, out, *bpc.grad(loss, [w1, b1, w2, b2])], None, []
    outs, _ = assert_same_as_interpreter(target, build, [np.ones((1, 1)), np.ones((1, 1))])
    np.testing.assert_allclose(outs[0][3], [0.0582], atol=1e-4)    # d loss / d b1
    np.testing.assert_allclose(outs[0][4], [[-0.2165]], atol=1e-4)  # d loss / d w2


def test_outputs_and_updates_that_are_views_of_intermediates(target):
    def build():
        x = bpc.input("x", (None, 3))
        A = bpc.param("A", np.arange(6.0).reshape(2, 3) / 7)
        W = bpc.param("W", np.zeros((3, 2)))
        h = bpc.tanh(x @ A.T)                      # (N, 2)
        later = bpc.exp(h) @ A                     # reuses buffers after h's last read
        outs = [bpc.transpose(h), bpc.reshape(h, (None, 2, 1)), bpc.sum(later * 2.0), later + 1.0]
        return [x], outs, {W: bpc.transpose(A + 1.0)}, [A, W]
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    assert_same_as_interpreter(target, build, [x], steps=2)


def test_output_that_is_a_view_of_a_param_gives_the_pre_step_value(target):
    def build():
        x = bpc.input("x", (None, 2))
        W = bpc.param("W", np.arange(6.0).reshape(2, 3))
        return [x], [bpc.sum(x @ W), W.T, bpc.reshape(W, (3, 2)), W], {W: W * 2.0}, [W]
    outs, values = assert_same_as_interpreter(target, build, [np.ones((1, 2))], steps=2)
    np.testing.assert_array_equal(outs[1][1], 2.0 * np.arange(6.0).reshape(2, 3).T)
    np.testing.assert_array_equal(values[1][0], 4.0 * np.arange(6.0).reshape(2, 3))


# ----- simultaneous updates ---------------------------------------------------------------

def test_updates_are_simultaneous(target):
    """Every update value is computed from the pre-step values, then all
    are written: a swap, the target-network pattern, an update that is an
    output, and a cycle of three that goes through views."""
    def build():
        z = bpc.input("z", (None, 1))
        A, B = bpc.param("A", np.array([1.0, 5.0])), bpc.param("B", np.array([2.0, 7.0]))
        C, D = bpc.param("C", np.array([3.0, -1.0])), bpc.param("D", np.array([0.5, 0.25]))
        P, Q = bpc.param("P", np.arange(4.0).reshape(2, 2)), bpc.param("Q", -np.eye(2))
        R = bpc.param("R", np.full((2, 2), 3.0))
        new_d = D * 3.0
        updates = {A: B, B: A, C: C - 1.0, D: new_d, P: Q.T, Q: R, R: P + 1.0}
        return [z], [bpc.sum(z) + bpc.sum(C), new_d, C], updates, [A, B, C, D, P, Q, R]
    _, values = assert_same_as_interpreter(target, build, [np.ones((2, 1))], steps=3)
    np.testing.assert_array_equal(values[0][0], [2.0, 7.0])
    np.testing.assert_array_equal(values[0][1], [1.0, 5.0])
    np.testing.assert_array_equal(values[1][0], [1.0, 5.0])


def test_target_network_copy_sees_the_old_weights(target):
    def build():
        x = bpc.input("x", (None, 2))
        W = bpc.param("W", np.ones((2, 2)))
        T = bpc.param("T", np.zeros((2, 2)))
        loss = bpc.sum(bpc.square(x @ W))
        (g,) = bpc.grad(loss, [W])
        return [x], [loss], {W: W - 0.1 * g, T: W}, [W, T]
    _, values = assert_same_as_interpreter(target, build, [np.ones((3, 2))], steps=2)
    np.testing.assert_array_equal(values[0][1], np.ones((2, 2)))


# ----- names --------------------------------------------------------------------------------

def test_user_names_never_reach_generated_identifiers(target):
    names = ["x_b", "b", "i0", "math", "b0", "return", "np", "σ²", "µ", "μ", "N", "step_serial",
             "with space", "a\nimport os"]

    def build():
        x = bpc.input("x_b", (None, 2))
        params = [bpc.param(n, np.full(2, 1.0 + k)) for k, n in enumerate(names)]
        out = x
        for k, p in enumerate(params):
            out = out * p + float(k) if k % 2 else out + p
        named = bpc.tanh(out, name="np")
        return [x], [bpc.sum(out), named], {p: p * 0.5 for p in params[:4]}, params
    assert_same_as_interpreter(target, build, [np.linspace(-0.1, 0.1, 6).reshape(3, 2)], rtol=1e-9)


def test_source_shows_user_names_only_in_the_legend():
    x = bpc.input("x", (None, 2))
    W = bpc.param("weights of 'layer\n1'", np.ones((2, 2)))
    f = bpc.function([x], bpc.sum(x @ W), target="cpu")
    code = f.backend.source
    assert "layer" not in code and "weights" not in code
    assert "weights of" in f.source.split("\n\n")[0]     # the legend, one comment per line
    assert all(line.startswith("#") for line in f.source.split("\n\n")[0].splitlines())


# ----- threads, residency, inputs -----------------------------------------------------------

@pytest.mark.parametrize("target, options", [("interpret", {}), ("cpu", {}), ("cpu", {"check": True}),
                                             ("cpu", {"check_numerics": True})])
def test_concurrent_steps_that_update_a_param_run_one_at_a_time(target, options):
    x = bpc.input("x", (None, 3), dtype="float64")
    s = bpc.state("s", np.float64(0.0))
    f = bpc.function([x], bpc.sum(x), updates={s: s + 1.0}, target=target, **options)
    def worker(_):
        for _ in range(50):
            f(np.ones((2, 3)))       # a false alarm of check=True would raise here
    assert not in_threads(worker, 4) and s.value == 200.0


def test_cuda_calls_from_several_threads_are_each_correct():
    if "cuda" not in TARGETS:
        pytest.skip("target cuda is not tested here (BPC_TEST_TARGETS)")
    x = bpc.input("x", (None, 2), dtype="float64")
    W = bpc.param("W", np.array([[1.0, 2.0], [3.0, 4.0]]))
    f = bpc.function([x], x @ W + 1.0, target="cuda")
    results = []

    def worker(k):
        for _ in range(3):
            results.append((k, f(np.full((2, 2), float(k)))))
    assert not in_threads(worker, 3) and len(results) == 9
    for k, out in results:
        np.testing.assert_allclose(out, np.full((2, 2), float(k)) @ W.value + 1.0)


@pytest.mark.parametrize("with_updates", [False, True])
def test_concurrent_calls_of_one_function_are_each_correct(with_updates):
    x = bpc.input("x", (None, 8), dtype="float64")
    W = bpc.param("W", np.linspace(-1, 1, 64).reshape(8, 8))
    count = bpc.param("count", np.zeros(1))
    out = bpc.tanh(x @ W) @ W.T
    f = bpc.function([x], [out, bpc.sum(out)], target="cpu",
                     updates={count: count + 1.0} if with_updates else None)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(int(rng.integers(1, 40)), 8)) for _ in range(16)]
    expected = [np.tanh(b @ W.value) @ W.value.T for b in batches]
    failures = []

    def worker(seed):
        order = np.random.default_rng(seed).permutation(len(batches))
        for _ in range(5):
            for i in order:
                o, s = f(batches[i])
                if not np.allclose(o, expected[i]) or not np.isclose(s, expected[i].sum()):
                    failures.append(i)
    assert not in_threads(worker, 4)
    assert not failures
    if with_updates:
        assert count.value[0] == 4 * 5 * len(batches)


@pytest.mark.parametrize("device", ["cuda"])
def test_a_param_has_one_value_whichever_target_wrote_it_last(device):
    if device not in TARGETS:
        pytest.skip(f"target {device} is not tested here (BPC_TEST_TARGETS)")
    x = bpc.input("x", (None, 2))
    W = bpc.param("W", np.ones((2, 2)))
    loss = bpc.sum(x @ W)
    (g,) = bpc.grad(loss, [W])
    steps = {t: bpc.function([x], loss, updates={W: W - 0.5 * g}, target=t)
             for t in ("interpret", "cpu", device)}
    predict = {t: bpc.function([x], x @ W, target=t) for t in ("interpret", "cpu", device)}
    X = np.ones((1, 2))
    expected = np.ones((2, 2))
    for t in ["cpu", device, device, "interpret", "cpu", device]:
        steps[t](X)
        expected -= 0.5
        for reader in ("interpret", "cpu", device):
            np.testing.assert_allclose(predict[reader](X), X @ expected, err_msg=f"after {t}, read on {reader}")
        np.testing.assert_allclose(W.value, expected)
    W.value = np.full((2, 2), 7.0)      # a host assignment reaches the device copy
    np.testing.assert_allclose(predict[device](X), X @ W.value)


def test_read_only_inputs_run_the_same_machine_code():
    x = bpc.input("x", (None, 3))
    f = bpc.function([x], bpc.sum(x * 2.0), target="cpu", parallel=False)
    a = np.ones((2, 3))
    f(a)
    runner = f.backend._runner_module.run
    signatures = len(runner.signatures)
    a.flags.writeable = False
    assert f(a) == 12.0
    assert len(runner.signatures) == signatures


# ----- the numerics check and check=True -----------------------------------------------------

def test_check_numerics_catches_a_nan_gradient_and_leaves_params_unchanged(target):
    x = bpc.input("x", (None, 2))
    W = bpc.param("W", np.array([[1.0, -1.0], [2.0, 0.5]]))
    loss = bpc.sum(bpc.sqrt(bpc.abs(x @ W)))      # finite, but its gradient at 0 is inf
    (g,) = bpc.grad(loss, [W])
    step = bpc.function([x], loss, updates={W: W - 0.1 * g}, target=target, check_numerics=True)
    before = W.value.copy()
    with pytest.raises(FloatingPointError, match="left unchanged"):
        step(np.array([[1.0, 2.0]]))              # x @ W has a zero column
    np.testing.assert_array_equal(W.value, before)
    step(np.array([[1.0, 1.0]]))
    assert not np.array_equal(W.value, before)


@pytest.mark.parametrize("target", COMPILED)
def test_check_runs_the_interpreter_beside_the_target_and_names_the_mismatch(target, monkeypatch):
    x = bpc.input("x", (None, 2))
    W = bpc.param("W", np.ones((2, 2)))
    out = bpc.tanh(x @ W)
    step = bpc.function([x], [out], updates={W: W * 0.5}, target=target, check=True)
    step(np.ones((3, 2)))                         # agrees: no error
    np.testing.assert_array_equal(W.value, 0.5 * np.ones((2, 2)))
    # Make the compiled step wrong, as a compiler bug would.
    real = step.backend.run

    def broken(ws, arrays, batch):
        variant = real(ws, arrays, batch)
        W.value = W.value + np.array([[1.0, 0.0], [0.0, 0.0]])
        return variant
    monkeypatch.setattr(step.backend, "run", broken)
    with pytest.raises(bpc.CheckError, match=r"update of param 'W'.*test_trust\.py.*left unchanged"):
        step(np.ones((3, 2)))
    np.testing.assert_array_equal(W.value, 0.5 * np.ones((2, 2)))


def test_products_over_an_empty_inner_axis_are_zeros(target):
    x = bpc.input("x", (None, 0), dtype="float64")
    W = bpc.param("W", np.zeros((0, 2)))
    y = x @ W
    f = bpc.function([x], [y, bpc.sum(y), bpc.sum(x, axis=1)], target=target)
    out, total, rows = f(np.zeros((3, 0)))
    np.testing.assert_array_equal(out, np.zeros((3, 2)))
    assert total == 0.0
    np.testing.assert_array_equal(rows, np.zeros(3))


def test_fusion_never_plans_a_cycle_between_kernels(target):
    """Found by the fuzzer: a group that grew after its members were placed
    (m * e joined m's loop, so that loop reads e) was later allowed to feed
    e's loop, a cycle the planner could not order."""
    def build():
        s, x = bpc.input("s", (None, 2), dtype="float64"), bpc.input("x", (None, 2), dtype="float64")
        m = bpc.maximum(s, x)
        e = bpc.exp(bpc.tanh(bpc.mean(x)))
        return [s, x], [bpc.max(m * e), 2.0 + bpc.max(m) * e], None, []
    assert_same_as_interpreter(target, build, [np.array([[0.5, -1.0]]), np.array([[0.25, 2.0]])], rtol=1e-12)


def test_reducing_over_no_axis_is_the_value_itself(target):
    x = bpc.input("x", (2, None), dtype="float64")
    assert bpc.max(x, axis=()) is x and bpc.mean(x, axis=()) is x
    counts = bpc.sum(bpc.cast(x, "int32"), axis=())
    assert counts.dtype == np.int64
    f = bpc.function([x], [bpc.transpose(bpc.max(x, axis=())), counts], target=target, optimize=False)
    out, c = f(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(out, np.arange(6.0).reshape(2, 3).T)
    np.testing.assert_array_equal(c, np.arange(6).reshape(2, 3))


def test_loops_with_different_reductions_stay_apart(target):
    """Found by the fuzzer: when two groups merged, the merged loop forgot
    the reduction axes of one of them, and a reduction over other axes
    then joined it, storing one of the two results at a stale index."""
    def build():
        r, b = bpc.input("r", (None, 4, 5), dtype="float64"), bpc.input("b", (None, 4, 5), dtype="float64")
        e, s = bpc.exp(bpc.tanh(r)), b - 0.5
        rows = bpc.max(s * s, axis=2, keepdims=True)
        cols = bpc.max(e * s, axis=(0, 1), keepdims=True)
        return [r, b], [e, rows, bpc.reshape(cols, (5,))], None, []
    rng = np.random.default_rng(0)
    assert_same_as_interpreter(target, build, [rng.normal(size=(3, 4, 5)), 3 * rng.normal(size=(3, 4, 5))],
                               rtol=1e-12)


@pytest.mark.parametrize("parallel", [False, True])
def test_a_loop_reading_a_transposed_view_runs_before_the_buffer_is_reused(parallel):
    """Numba's own fusion of parallel loops merged a loop reading v = b0.T
    with the next loop writing b0 (it does not see the alias); bpc fuses
    loops itself and switches Numba's fusion off."""

    def build():
        rng = np.random.default_rng(0)
        x = bpc.input("x", (None, 4), dtype="float64")
        P, Q = bpc.param("P", rng.standard_normal((4, 4))), bpc.param("Q", rng.standard_normal((4, 4)))
        W = bpc.param("W", rng.standard_normal((4, 4)))
        return [x], [(P + 1.0).T * 1.5, (Q + 1.0).T, W.T * 2.0], {W: W * 0.5 + 1.0}, [W]
    want = run_on("interpret", build, [np.ones((1, 4))], steps=2)
    inputs, outputs, updates, params = build()
    f = bpc.function(inputs, outputs, updates=updates, target="cpu", parallel=parallel)
    for step in range(2):
        for k, (g, w) in enumerate(zip(f(np.ones((1, 4))), want[0][step])):
            np.testing.assert_allclose(g, w, rtol=1e-12, err_msg=f"step {step}, output {k}")
    np.testing.assert_allclose(params[0].value, want[1][-1][0], rtol=1e-12)


def test_unoptimized_gradient_programs_compile(target):
    """Without the passes, grad's seed is a view of an inlined scalar constant."""
    x = bpc.input("x", (None, 3), dtype="float64")
    W = bpc.param("W", np.ones((3, 2)))
    loss = bpc.sum(x @ W)
    (g,) = bpc.grad(loss, [W])
    f = bpc.function([x], [loss, g], target=target, optimize=False)
    out, grad = f(np.ones((2, 3)))
    assert out == 12.0
    np.testing.assert_array_equal(grad, np.full((3, 2), 2.0))


@pytest.mark.parametrize("target", COMPILED)
def test_check_tolerates_float32_rounding(target):
    """exp in float32 differs by an ulp between NumPy and compiled code and
    the cancellation in exp(x) - y magnifies it: not an alarm."""
    x, y = bpc.input("x", (None,)), bpc.input("y", (None,))
    w = bpc.param("w", np.ones(1, np.float32))
    loss = bpc.mean((bpc.exp(x * w) - y) ** 2)
    (gw,) = bpc.grad(loss, [w])
    f = bpc.function([x, y], [loss, gw], target=target, check=True)
    f(np.array([8.1, 8.2, 8.3], np.float32), np.array([3300.0, 3640.0, 4020.0], np.float32))

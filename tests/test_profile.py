"""`Function.profile()`: one row per kernel call in step order, FLOPs and
GFLOP/s of the matrix products, a profile that leaves the model as one call
would, and the report's GEMM section. No timing comparisons: only that
times are positive."""
import json
import re

import numpy as np
import pytest

import bpc
from bpc.profile import Profile

SIZES = (12, 16, 16, 5)
BATCH = 7


def build(dtype, target="cpu", optimizer="adam"):
    """A tiny MLP training step with dropout (a counter state) and an
    optimizer with state; the same seeds give the same initial values."""
    x = bpc.input("x", (None, SIZES[0]), dtype=dtype)
    y = bpc.input("y", (None,), dtype="int64")
    params, h = [], x
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        W = bpc.param(f"W{i}", (a, b), init="he_normal", seed=i, dtype=dtype)
        c = bpc.param(f"b{i}", (b,), init="zeros", dtype=dtype)
        params += [W, c]
        h = h @ W + c
        if i < len(SIZES) - 2:
            h = bpc.dropout(bpc.relu(h), 0.25, seed=i)
    loss = bpc.softmax_cross_entropy(h, y)
    opt = bpc.optim.Adam(lr=0.01) if optimizer == "adam" else bpc.optim.SGD(lr=0.1, momentum=0.9)
    updates = opt.updates(loss, params)
    step = bpc.function([x, y], loss, updates=updates, target=target)
    leaves = params + [t for t in updates if t.kind == "state"]
    return step, leaves


def data(dtype, n=BATCH, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, SIZES[0])).astype(dtype), rng.integers(0, SIZES[-1], n)


@pytest.fixture(scope="module", params=["float32", "float64"])
def profiled(request):
    """A step profiled once (after one plain call), with its twin called
    twice instead, and the profile."""
    dtype = request.param
    optimizer = "adam" if dtype == "float32" else "sgd"
    step, leaves = build(dtype, optimizer=optimizer)
    twin, twin_leaves = build(dtype, optimizer=optimizer)
    X, Y = data(dtype)
    step(X, Y)
    twin(X, Y)
    prof = step.profile(X, Y, repeat=3)
    expected = twin(X, Y)
    return dict(dtype=dtype, step=step, leaves=leaves, twin=twin, twin_leaves=twin_leaves,
                prof=prof, expected=expected, data=(X, Y))


def test_rows_cover_every_kernel_call_in_step_order(profiled):
    step, prof = profiled["step"], profiled["prof"]
    assert isinstance(prof, Profile)
    listing = [line[2:].split(": bpc_kernel")[0] for line in step.source.splitlines()
               if re.match(r"# (k\d+_|update )", line)]
    assert [r.index for r in prof.rows] == list(range(len(listing)))
    assert [r.name for r in prof.rows] == listing
    assert {r.variant for r in prof.rows} == {prof.variant}
    assert prof.batch == BATCH and prof.repeat == 3


def test_matmul_rows_count_flops_from_the_shapes(profiled):
    prof = profiled["prof"]
    matmuls = [r for r in prof.rows if r.flops is not None]
    # 3 forward products, 2 per layer backward but none for the gradient wrt x.
    assert len(matmuls) == 3 + 2 * 3 - 1
    assert all(": matmul [matmul]" in r.name for r in matmuls)
    assert all(r.flops is None and r.gflops is None for r in prof.rows if r not in matmuls)
    first = matmuls[0]   # x @ W0: (7, 12) @ (12, 16)
    assert first.shapes == f"{BATCH}x12 @ 12x16 -> {BATCH}x16"
    assert first.flops == 2 * BATCH * 12 * 16
    for r in matmuls:
        m, k, k2, n = map(int, re.match(r"(\d+)x(\d+)ᵀ? @ (\d+)x(\d+)ᵀ? -> ", r.shapes).groups())
        assert k == k2 and r.flops == 2 * m * k * n
        assert r.gflops == pytest.approx(r.flops / r.seconds / 1e9)
    # The gradient of W0 is x.T @ g: a transposed view of the batch.
    assert f"12x{BATCH}ᵀ @ {BATCH}x16 -> 12x16" in [r.shapes for r in matmuls]


def test_times_are_positive_and_add_up(profiled):
    prof = profiled["prof"]
    assert all(r.seconds > 0 for r in prof.rows)
    assert prof.step_seconds > 0
    assert prof.total == pytest.approx(sum(r.seconds for r in prof.rows))


def test_profile_leaves_params_and_state_as_one_call_would(profiled):
    leaves, twin_leaves = profiled["leaves"], profiled["twin_leaves"]
    assert len(leaves) == len(twin_leaves) > 2 * (len(SIZES) - 1)   # params, moments, counters
    for a, b in zip(leaves, twin_leaves):
        assert a.name == b.name
        np.testing.assert_array_equal(a.value, b.value, err_msg=a.name)
    # The profile's real step returned what the twin's second call did,
    np.testing.assert_array_equal(profiled["prof"].outputs, profiled["expected"])
    # and the next steps agree too (dropout counters, Adam's step count).
    X, Y = profiled["data"]
    np.testing.assert_array_equal(profiled["step"](X, Y), profiled["twin"](X, Y))
    for a, b in zip(leaves, twin_leaves):
        np.testing.assert_array_equal(a.value, b.value, err_msg=a.name)


def test_str_to_dict_and_report(profiled):
    step, prof = profiled["step"], profiled["prof"]
    text = str(prof)
    assert "GFLOP/s" in text and "GEMM:" in text and "threads" in text
    for r in prof.rows:
        assert r.name[:40] in text
    assert "%" in text
    d = json.loads(json.dumps(prof.to_dict()))
    assert len(d["rows"]) == len(prof.rows) and d["step_seconds"] == prof.step_seconds
    assert d["rows"][0]["name"] == prof.rows[0].name
    report = step.report()
    assert "matrix products (last profile" in report
    assert prof.matmuls[0].shapes in report and "GFLOP/s" in report
    assert step.last_profile is prof


def test_report_has_no_gemm_section_before_a_profile():
    step, _ = build("float32")
    assert "last profile" not in step.report()


def test_profile_binds_and_validates_arguments_like_a_call():
    step, leaves = build("float32")
    X, Y = data("float32")
    before = [t.value.copy() for t in leaves]
    with pytest.raises(bpc.errors.CallError):
        step.profile(X)
    with pytest.raises(bpc.errors.CallError):
        step.profile(X[:, :3], Y)
    with pytest.raises(ValueError, match="repeat"):
        step.profile(X, Y, repeat=0)
    for t, v in zip(leaves, before):   # nothing ran
        np.testing.assert_array_equal(t.value, v)
    prof = step.profile(y=Y, x=X, repeat=1)     # by name
    assert prof.repeat == 1 and len(prof.rows) > 0


def test_profile_of_a_function_without_updates():
    x = bpc.input("x", (None, 6), dtype="float64")
    W = bpc.param("W", (6, 3), seed=0, dtype="float64")
    f = bpc.function([x], [bpc.relu(x @ W), x @ W], target="cpu")
    X = np.random.default_rng(0).normal(size=(4, 6))
    prof = f.profile(X, repeat=2)
    assert [r.flops for r in prof.rows if r.flops is not None] == [2 * 4 * 6 * 3]
    np.testing.assert_allclose(prof.outputs[1], X @ W.value)


@pytest.mark.parametrize("target", ["interpret"])
def test_profile_is_for_the_cpu_target_only(target):
    step, _ = build("float32", target=target)
    with pytest.raises(ValueError, match=f"'{target}'"):
        step.profile(*data("float32"))

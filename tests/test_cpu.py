"""The CPU target: fusion, one compiled function per kernel structure
(shared between layers, functions and processes), one native call per step,
in-place updates, serial/parallel agreement, a batch dimension that never
recompiles, and the on-disk cache (warm start compiles nothing; corrupt
entries are rebuilt)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bpc
from bpc.backends import cache as cpu_cache
from bpc.backends.cpu import blas

MLP_SCRIPT = textwrap.dedent("""
    import numpy as np, bpc
    def build(sizes=(12, 16, 16, 5), seed=0, dropout=0.0):
        x = bpc.input("x", (None, sizes[0]))
        y = bpc.input("y", (None,), dtype="int64")
        params, h = [], x
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            W = bpc.param(f"W{i}", (a, b), init="he_normal", seed=seed + i)
            c = bpc.param(f"b{i}", (b,), init="zeros")
            params += [W, c]
            h = h @ W + c
            if i < len(sizes) - 2:
                h = bpc.relu(h)
                if dropout:
                    h = bpc.dropout(h, dropout, seed=i)
        loss = bpc.softmax_cross_entropy(h, y)
        grads = bpc.grad(loss, params)
        return x, y, params, loss, {p: p - 0.1 * g for p, g in zip(params, grads)}
""")
namespace = {}
exec(MLP_SCRIPT, namespace)
build_mlp = namespace["build"]


def data(n=13, d=12, k=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, k, n)


@pytest.fixture(scope="module")
def mlp_step():
    """One compiled MLP training step shared by the structural tests."""
    x, y, params, loss, updates = build_mlp()
    return bpc.function([x, y], loss, updates=updates, target="cpu"), params


def test_training_step_is_one_generated_function_with_fused_loops(mlp_step):
    step, _ = mlp_step
    kernels = step.backend.plan.kernels
    kinds = [k.form for k in kernels]
    assert kinds.count("matmul") == 3 + 2 * 3 - 1       # 3 forward, 5 backward (no grad wrt x)
    # The bias add and ReLU of each hidden layer are one loop nest,
    loops = [[n.op.name for n in k.nodes] for k in kernels if k.form == "loop"]
    assert sum(ops[:2] == ["add", "relu"] for ops in loops) == 2
    # and each bias gradient's column sum is fused with the ReLU mask product.
    assert any(ops[-1] == "sum" and "mul" in ops for ops in loops)
    # Every SGD update is written straight into its parameter.
    assert len(step.backend.plan.in_place) == 6 and not step.backend.plan.copies
    src = step.source
    modules = step.backend.kernel_sources
    # Each module has a serial and a parallel variant; those without a
    # parallel loop (the products) only the serial one.
    assert src.count("def serial(N, p, d):") == len(modules)
    with_loops = [m for m in modules if "prange(" in m]
    assert src.count("def parallel(N, p, d):") == len(with_loops)
    assert src.count("parallel = serial") == len(modules) - len(with_loops) > 0
    assert not any("# matmul" in m.split("\n")[1] for m in with_loops)
    assert "prange" in src and ("cblas_gemm(" if blas.numpy_gemm() else "np.dot(") in src and "# k0_" in src
    # One module per kernel structure: the hidden layers' identical kernels
    # (bias + ReLU, the ReLU mask product...) and all SGD updates of one
    # shape share theirs.
    calls = [k for k in kernels if k.form != "view"]
    assert len(modules) < len(calls)
    assert sum(m.split("\n")[1].startswith("# loop [add, relu") for m in modules) == 1


def test_step_matches_interpreter_over_several_steps_with_smaller_last_batch(mlp_step):
    step, params = mlp_step
    x, y, ref_params, loss, updates = build_mlp()
    ref = bpc.function([x, y], loss, updates=updates, target="interpret")
    for p, q in zip(params, ref_params):
        p.value = q.value
    X, Y = data(40)
    runner = step.backend._runner_module.run   # shared by every 2-input step in the process
    signatures = None
    for lo, hi in [(0, 16), (16, 32), (32, 40)]:   # last batch is smaller
        a = step(X[lo:hi], Y[lo:hi])
        b = ref(X[lo:hi], Y[lo:hi])
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        signatures = signatures or list(runner.signatures)
    for p, q in zip(params, ref_params):
        np.testing.assert_allclose(p.value, q.value, rtol=1e-5, atol=1e-6)
    # Batch sizes 16 and 8 ran the same machine code: the same kernels, no
    # runner signature beyond the first batch's (other tests' steps may have added theirs).
    assert list(step.backend.compiles) == ["serial"]
    assert runner.signatures == signatures


def test_parallel_and_serial_variants_agree_with_the_interpreter():
    """Every parallel kernel is checked against its serial twin (Numba's
    parallel lowering has produced silent wrong results before)."""
    x, y, params, loss, updates = build_mlp(dropout=0.25)
    grads = bpc.grad(loss, params)
    X, Y = data(37)
    results, start = [], None
    for target, parallel in (("interpret", None), ("cpu", False), ("cpu", True)):
        opts = {} if parallel is None else {"parallel": parallel}
        f = bpc.function([x, y], [loss, *grads], updates=updates, target=target, **opts)
        written = [p for p, _ in f.updates]            # params and dropout counters
        if start is None:
            start = [p.value.copy() for p in written]
        for p, v in zip(written, start):
            p.value = v
        outs = [f(X, Y) for _ in range(2)]              # two steps: masks and params change
        results.append((outs, [p.value.copy() for p in params]))
    (ref, ref_params), *compiled = results
    for outs, values in compiled:
        for a, b in zip(outs, ref):
            for u, v in zip(a, b):
                np.testing.assert_allclose(u, v, rtol=2e-5, atol=1e-6)
        for u, v in zip(values, ref_params):
            np.testing.assert_allclose(u, v, rtol=2e-5, atol=1e-6)


def test_update_reading_a_param_after_it_is_updated_uses_the_old_value():
    """Updates are simultaneous: b's new value reads a's *old* value."""
    a = bpc.param("a", np.array([1.0, 2.0]))
    b = bpc.param("b", np.array([10.0, 20.0]))
    x = bpc.input("x", (2,), dtype="float64")
    f = bpc.function([x], a * 1.0, updates={a: a + x, b: b + a * 2.0}, target="cpu")
    out = f(np.array([100.0, 100.0]))
    np.testing.assert_allclose(out, [1.0, 2.0])
    np.testing.assert_allclose(a.value, [101.0, 102.0])
    np.testing.assert_allclose(b.value, [12.0, 24.0])


def test_nan_propagates_through_compiled_relu_max_and_reductions():
    """fastmath must not assume away NaN (no 'nnan' flag)."""
    x = bpc.input("x", (None, 3), dtype="float32")
    outs = [bpc.relu(x), bpc.max(x, axis=1), bpc.maximum(x, 0.0), bpc.sum(x, axis=1)]
    f = bpc.function([x], outs, target="cpu")
    v = np.array([[np.nan, 1.0, -1.0], [0.5, -2.0, 3.0]], dtype=np.float32)
    relu, mx, maximum, total = f(v)
    assert np.isnan(relu[0, 0]) and np.isnan(mx[0]) and np.isnan(maximum[0, 0]) and np.isnan(total[0])
    assert mx[1] == 3.0 and total[1] == 1.5


def test_check_numerics_names_the_first_bad_node_on_cpu():
    x = bpc.input("x", (None, 2), dtype="float32")
    bad = bpc.log(x)                     # NaN for negative inputs
    f = bpc.function([x], bpc.sum(bad * 2.0), target="cpu", check_numerics=True)
    with pytest.raises(FloatingPointError, match=r"log.*test_cpu\.py"):
        f(np.array([[1.0, -1.0]], dtype=np.float32))


def test_float32_sums_accumulate_in_float64():
    x = bpc.input("x", (None,), dtype="float32")
    f = bpc.function([x], bpc.sum(x), target="cpu")
    v = np.full(1_000_000, 0.1, dtype=np.float32)
    exact = np.float32(1_000_000 * float(np.float32(0.1)))   # a float32 running sum gives ~100958
    assert f(v) == exact


def test_fused_dot_view_draws_kernels_as_clusters(mlp_step):
    step, _ = mlp_step
    text = bpc.to_dot(None, fused=step)
    assert text.count("subgraph cluster_k") >= len([k for k in step.backend.plan.kernels if k.form == "loop"])
    import pydot
    assert pydot.graph_from_dot_data(text)


def test_source_is_written_next_to_the_cache_entry(mlp_step):
    step, _ = mlp_step
    for (module, path), source in zip(step.backend.kernel_modules, step.backend.kernel_sources):
        with open(path, encoding="utf-8") as f:
            assert f.read() == source
        assert os.path.basename(path) == module.__name__ + ".py"
        assert f"# ----- {module.__name__}.py\n{source}" in step.source
    assert step.source.endswith(step.backend.source)   # after the legend of user names


def _run(code, cache):
    env = dict(os.environ, BPC_CACHE_DIR=str(cache), BPC_LOG_COMPILES="1")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


WARM_START = MLP_SCRIPT + textwrap.dedent("""
    x, y, params, loss, updates = build()
    f = bpc.function([x, y], loss, updates=updates, target="cpu")
    f(np.ones((4, 12), np.float32), np.zeros(4, np.int64))
    hows = [c.how for c in f.backend.compiles["serial"]]
    compiled = hows.count("compiled") + hows.count("helper")   # here or by a helper process
    print("misses", compiled, "hits", hows.count("cache hit"), "of", len(hows))
""")


def test_second_process_compiles_nothing_and_corrupt_entries_are_rebuilt(tmp_path):
    first = _run(WARM_START, tmp_path)
    assert first.returncode == 0, first.stderr
    n = int(first.stdout.split()[-1])
    assert f"misses {n} hits 0" in first.stdout and "compiled cpu serial" in first.stderr
    assert first.stderr.count("bpc: compiled kernel") + first.stderr.count("compiled by a helper") == n
    second = _run(WARM_START, tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"misses 0 hits {n}" in second.stdout and "loaded cached cpu serial" in second.stderr
    # Corrupt Numba's cache files and a module: both are detected and rebuilt.
    module = next((tmp_path / "cpu").glob("*/bpc_kernel_*.py"))
    for f in (tmp_path / "cpu").glob("*/__pycache__/*"):
        f.write_bytes(b"garbage")
    module.write_text("raise SystemExit('this must never run')\n")
    third = _run(WARM_START, tmp_path)
    assert third.returncode == 0, third.stderr
    assert "discarding" in third.stderr and f"misses {n} hits 0" in third.stdout
    assert "must never run" not in module.read_text()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BPC_CACHE_DIR", str(tmp_path / "here"))
    assert cpu_cache.cache_dir() == str(tmp_path / "here")


def test_helper_processes_compile_kernels_this_process_then_loads(tmp_path, monkeypatch):
    """A helper process compiles every kernel this process leaves it into
    the shared cache; this process loads them (checked against the hashes
    the helper recorded) and computes what the interpreter does."""
    from bpc.backends.cpu import workers
    from bpc.backends.cpu.codegen import KERNEL_PREFIX
    monkeypatch.setenv("BPC_CACHE_DIR", str(tmp_path))
    x, y, params, loss, _ = build_mlp(sizes=(7, 9, 4))
    updates = bpc.optim.Adam(1e-2).updates(loss, params)
    f = bpc.function([x, y], loss, updates=updates, target="cpu", parallel=False)
    new = list(enumerate(f.backend.kernel_sources))
    helpers = workers.Helpers(1, "serial", new, KERNEL_PREFIX)
    assert helpers.finish([i for i, _ in new]) == {i for i, _ in new}    # this process claimed none
    ref = bpc.function([x, y], loss, updates=updates, target="interpret")
    start = [p.value.copy() for p, _ in f.updates]
    X, Y = data(11, d=7, k=4)
    got = f(X, Y)
    assert {c.how for c in f.backend.compiles["serial"]} <= {"cache hit", "shared"}   # nothing compiled here
    after = [p.value.copy() for p, _ in f.updates]
    for (p, _), v in zip(f.updates, start):
        p.value = v
    np.testing.assert_allclose(got, ref(X, Y), rtol=1e-5)
    for (p, _), v in zip(ref.updates, after):
        np.testing.assert_allclose(p.value, v, rtol=1e-5, atol=1e-6)


def test_helpers_start_only_where_they_pay(monkeypatch, tmp_path):
    from bpc.backends.cpu import workers
    monkeypatch.setenv("BPC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BPC_COMPILE_WORKERS", "3")
    assert workers.helper_count(workers.MIN_NEW_KERNELS - 1) == 0
    assert workers.helper_count(100) == 3
    monkeypatch.setenv("BPC_COMPILE_WORKERS", "0")
    assert workers.helper_count(100) == 0
    monkeypatch.setenv("BPC_COMPILE_WORKERS", "many")
    assert workers.helper_count(100) == 0


def test_compile_time_study_cold_compiles_and_warm_loads(tmp_path):
    """The compile-time benchmark's two fresh processes: the cold one
    compiles every kernel, the warm one (same cache) compiles none."""
    from bpc.bench import compile_time
    report = compile_time.run(["chain:4"], timeout=300, progress=False)
    (row,) = report["results"]
    assert "error" not in row, row
    cold, warm = row["cold"], row["warm"]
    assert cold["kernel_modules"] >= 1 and cold["compiled"] == cold["kernel_modules"]
    assert warm["compiled"] == 0 and warm["kernel_modules"] == cold["kernel_modules"]
    assert "chain:4" in compile_time.format_table(report)


WAIT_POLICY = textwrap.dedent("""
    import os, numpy as np, bpc
    x = bpc.input("x", (None, 3))
    bpc.function([x], bpc.sum(x), target="cpu", parallel=True)(np.ones((2, 3), np.float32))
    print("policy", os.environ.get("OMP_WAIT_POLICY"))
""")


@pytest.mark.parametrize("user", [None, "active"])
def test_openmp_threads_wait_passively_unless_the_user_chose(tmp_path, user):
    """Spinning OpenMP threads next to OpenBLAS's slowed steps ~40x; bpc asks
    for passive waiting before Numba starts its threads, and keeps a policy
    the user set."""
    env = dict(os.environ, BPC_CACHE_DIR=str(tmp_path))
    env.pop("OMP_WAIT_POLICY", None)
    if user:
        env["OMP_WAIT_POLICY"] = user
    out = subprocess.run([sys.executable, "-c", WAIT_POLICY], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"policy {user or 'passive'}" in out.stdout


def test_one_flat_optimizer_kernel_updates_params_of_every_shape_and_rank():
    """Adam's update of a matrix, a vector and a 3-d param is one compiled
    flat kernel (its size read at run time); every output and updated param
    matches the interpreter (check=True) over several steps."""
    x = bpc.input("x", (None, 4))
    W = bpc.param("W", (4, 3), init="glorot_uniform", seed=1)
    b = bpc.param("b", (3,), init="zeros")
    T = bpc.param("T", (2, 2, 3), init="glorot_uniform", seed=2)
    h = bpc.tanh(x @ W + x @ bpc.reshape(T, (4, 3)) + b)
    loss = bpc.sum(h * h)
    f = bpc.function([x], loss, updates=bpc.optim.Adam(0.05).updates(loss, [W, b, T]), target="cpu",
                     check=True)
    X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    for _ in range(3):
        f(X)
    flat = [i for i, src in enumerate(f.backend.kernel_sources) if src.split("\n")[1].endswith(", flat")]
    assert any(f.backend._calls.count(i) == 3 for i in flat), [f.backend.kernel_sources[i].split("\n")[1]
                                                               for i in flat]


@pytest.mark.parametrize("parallel", [False, True])
def test_reductions_over_leading_axes_run_in_memory_order_and_match_numpy(parallel):
    """sum/mean/max over the batch (and the batch and the next axis), which
    keep the trailing axes, run as parts of rows with partial results
    combined after: checked against NumPy for batches smaller than, equal
    to and not a multiple of the parts, with NaN kept by max."""
    x = bpc.input("x", (None, 5), dtype="float64")
    y = bpc.input("y", (None, 3, 4), dtype="float32")
    outs = [bpc.sum(x * x, axis=0), bpc.mean(x, axis=0, keepdims=True), bpc.max(x + 1.0, axis=0),
            bpc.sum(y, axis=(0, 1)), bpc.max(y, axis=(0, 1), keepdims=True)]
    f = bpc.function([x, y], outs, target="cpu", parallel=parallel)
    assert any("nparts" in src for src in f.backend.kernel_sources)
    rng = np.random.default_rng(3)
    for n in (1, 7, 16, 300):
        X, Y = rng.normal(size=(n, 5)), rng.normal(size=(n, 3, 4)).astype(np.float32)
        Y[n - 1, 2, 1] = np.nan
        want = [(X * X).sum(0), X.mean(0, keepdims=True), (X + 1.0).max(0), Y.sum((0, 1)),
                Y.max((0, 1), keepdims=True)]
        for got, ref in zip(f(X, Y), want):
            np.testing.assert_allclose(got, ref, rtol=1e-5 if got.dtype == np.float32 else 1e-12)


def test_scratch_arrays_of_one_shape_stay_distinct_within_a_kernel():
    """Two column sums in one loop nest keep their partial sums in two
    workspace scratch arrays of one shape (sharing one gave wrong sums);
    the next kernel reuses them."""
    x = bpc.input("x", (None, 5), dtype="float64")
    t = bpc.tanh(x)
    f = bpc.function([x], [bpc.sum(t * t, axis=0), bpc.sum(t, axis=0), bpc.sum(bpc.exp(x), axis=0)], target="cpu")
    assert [k.describe().split(": ")[1] for k in f.backend.plan.kernels] == [
        "loop [tanh, mul, sum, sum]", "loop [exp, sum]"]
    specs = f.backend._scratch_specs
    assert len(specs) == 2 and specs[0] == specs[1]
    X = np.random.default_rng(0).normal(size=(37, 5))
    for got, want in zip(f(X), [(np.tanh(X) ** 2).sum(0), np.tanh(X).sum(0), np.exp(X).sum(0)]):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("choice", ["numpy", "scipy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matrix_products_through_either_blas_match_the_interpreter(monkeypatch, choice, dtype):
    """Products with every transpose a backward pass takes, through NumPy's
    CBLAS gemm (the default where found) and through Numba's np.dot
    (BPC_BLAS=scipy), agree with the interpreter (check=True) over steps."""
    if choice == "numpy" and blas.numpy_gemm() is None:
        pytest.skip("this NumPy's BLAS exposes no CBLAS gemm bpc can call")
    monkeypatch.setenv("BPC_BLAS", choice)
    x = bpc.input("x", (None, 6), dtype=dtype)
    W = bpc.param("W", (6, 5), init="glorot_uniform", seed=4, dtype=dtype)
    V = bpc.param("V", (5, 3), init="glorot_uniform", seed=5, dtype=dtype)
    h = bpc.tanh(x @ W)
    loss = bpc.sum((h @ V) * (h @ V)) + bpc.sum(bpc.transpose(h) @ x)
    f = bpc.function([x], loss, updates=bpc.optim.SGD(0.01).updates(loss, [W, V]), target="cpu", check=True)
    assert ("cblas_gemm(" in f.source) == (choice == "numpy")
    X = np.random.default_rng(1).normal(size=(9, 6)).astype(dtype)
    for _ in range(3):
        f(X)


def test_an_unknown_blas_choice_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("BPC_BLAS", "mkl")
    x = bpc.input("x", (None, 2))
    with pytest.raises(ValueError, match="BPC_BLAS='mkl'.*'numpy' or 'scipy'"):
        bpc.function([x], x @ np.ones((2, 2), np.float32), target="cpu")


def test_only_kernels_with_enough_work_run_in_parallel():
    """By default each kernel call chooses its variant: a loop over at least
    PARALLEL_MIN_WORK elements runs its parallel variant (with more than one
    thread), the small ones and the products stay serial; results match the
    interpreter either way."""
    from bpc.backends.cpu import PARALLEL_MIN_WORK
    x = bpc.input("x", (None, 1024))
    big = bpc.tanh(x) * 2.0                            # N x 1024 elements
    small = bpc.sum(big, axis=1)                       # a row reduction: N elements kept
    f = bpc.function([x], [small, bpc.mean(small)], target="cpu", check=True)
    f(np.ones((4, 1024), np.float32))
    assert list(f.backend.compiles) == ["serial"]       # a small batch: everything serial
    n = PARALLEL_MIN_WORK // 1024
    f(np.random.default_rng(0).normal(size=(n, 1024)).astype(np.float32))
    ws = f.backend._acquire(n)
    choice = ws[4]
    f.backend._release(n, ws)
    if bpc.get_num_threads() == 1:
        assert set(choice) == {"serial"}
        return
    assert "parallel" in choice and "serial" in choice
    assert {c.variant for c in f.backend.compiles["mixed"]} == {"serial", "parallel"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sgd_updates_of_weights_fold_into_their_matrix_products(dtype):
    """`W - lr * (hᵀ @ g)` runs as one BLAS call accumulating into W (no
    gradient buffer, no update loop), unless the product reads W itself or
    its gradient is also returned; every case matches the interpreter."""
    x = bpc.input("x", (None, 4), dtype=dtype)
    W = bpc.param("W", (4, 4), init="glorot_uniform", seed=1, dtype=dtype)
    V = bpc.param("V", (4, 3), init="glorot_uniform", seed=2, dtype=dtype)
    b = bpc.param("b", (3,), init="zeros", dtype=dtype)
    loss = bpc.sum(bpc.tanh(bpc.tanh(x @ W) @ V + b) ** 2)
    gW, gV, gb = bpc.grad(loss, [W, V, b])
    A = bpc.constant(np.eye(4) * 0.5, dtype=dtype)
    cases = {"folded": ({W: W - 0.1 * gW, V: V - 0.1 * gV, b: b - 0.1 * gb}, [loss], 2),
             "product reads W": ({W: W - 0.1 * (W @ A), V: V - 0.1 * gV}, [loss], 1),
             "gradient returned": ({W: W - 0.1 * gW, V: V - 0.1 * gV}, [loss, gV], 1)}
    X = np.random.default_rng(2).normal(size=(5, 4)).astype(dtype)
    for name, (updates, outs, folded) in cases.items():
        for p, seed in ((W, 1), (V, 2), (b, 3)):
            p.value = np.random.default_rng(seed).normal(size=p.shape).astype(dtype) * 0.5
        f = bpc.function([x], outs, updates=updates, target="cpu", check=True)
        kinds = [k.describe().split(": ", 1)[1] for k in f.backend.plan.kernels]
        want = folded if blas.numpy_gemm() else 0
        assert kinds.count("matmul [matmul, mul, sub]") == want, (name, kinds)
        for _ in range(3):
            f(X)


@pytest.mark.parametrize("choice", ["numpy", "scipy"])
def test_batched_products_and_their_weight_gradients_match_the_interpreter(monkeypatch, choice):
    """Stacks of matrices times a weight (one BLAS call over all rows), the
    weight's gradient (products summed over the batch accumulate into one
    output: the stack is never stored), broadcast batches and partial sums
    with keepdims=False: all agree with the interpreter over SGD steps."""
    if choice == "numpy" and blas.numpy_gemm() is None:
        pytest.skip("this NumPy's BLAS exposes no CBLAS gemm bpc can call")
    monkeypatch.setenv("BPC_BLAS", choice)
    x = bpc.input("x", (None, 5, 6), dtype="float64")
    W = bpc.param("W", (6, 4), init="glorot_uniform", seed=1, dtype="float64")
    S = bpc.param("S", (3, 1, 4, 5), init="glorot_uniform", seed=2, dtype="float64")
    h = bpc.tanh(x @ W)                               # (N, 5, 4)
    loss = bpc.sum(h * h) + bpc.sum((S @ h) ** 2)     # (3, N, 4, 4): S broadcast over the batch
    partial = bpc.sum(h.mT @ x, axis=0)               # summed over the batch, keepdims=False
    per_row = bpc.sum(x.mT @ x, axis=1)               # a sum over matrix axes: not folded
    f = bpc.function([x], [loss, partial, per_row], target="cpu", check=True,
                     updates=bpc.optim.SGD(0.05).updates(loss, [W, S]))
    kinds = [k.describe().split(": ", 1)[1] for k in f.backend.plan.kernels]
    # W's and S's gradients, h's through S (summed over S's batch of 3), `partial`
    assert kinds.count("matmul [matmul, sum]") == 4, kinds
    X = np.random.default_rng(3).normal(size=(7, 5, 6))
    for _ in range(3):
        f(X)
    f(X[:1])                                           # batch 1


def test_slices_run_inside_the_loops_that_read_them():
    """A slice is a read at shifted indices: the four gates of an LSTM's
    pre-activations, each through its activation and summed, are one loop
    kernel (no slice kernel, no sliced copies), and its gradient (unslices
    summed) another; values match NumPy, reversed and strided slices too."""
    x = bpc.input("x", (None, 8), dtype="float64")
    parts = [x[:, 0:2], x[:, 2:4], x[:, 7:3:-2], x[:, 1::4]]
    total = bpc.tanh(parts[0]) + bpc.sigmoid(parts[1]) * parts[2] + parts[3]
    g = bpc.grad(bpc.sum(total * total), x)
    f = bpc.function([x], [total, g] + parts, target="cpu")
    forms = [k.form for k in f.backend.plan.kernels]
    assert "slice" not in forms and "unslice" not in forms, forms
    X = np.random.default_rng(0).normal(size=(3, 8))
    p = [X[:, 0:2], X[:, 2:4], X[:, 7:3:-2], X[:, 1::4]]
    want = np.tanh(p[0]) + 1 / (1 + np.exp(-p[1])) * p[2] + p[3]
    got = f(X)
    np.testing.assert_allclose(got[0], want, rtol=1e-12)
    ref = bpc.function([x], g, target="interpret")(X)
    np.testing.assert_allclose(got[1], ref, rtol=1e-12)
    for a, b in zip(got[2:], p):
        np.testing.assert_array_equal(a, b)

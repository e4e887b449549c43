"""The CUDA target beyond the op suite (which runs on "cuda" through
conftest's TARGETS): launch strategies the small default simulator limits
do not reach (shared-memory tree reductions longer than a block, tiled
matrix products with partial tiles, grid-stride loops over several
blocks), views as index arithmetic, device-resident parameters synced
through `.value`, a training run against the interpreter, the error
without a GPU, and every kernel of some float32 graphs compiled to PTX for
a real GPU with no float64 arithmetic beyond the documented accumulators.

Without a GPU these run on Numba's CUDA simulator (conftest switches it
on); sizes are small and deliberately not powers of two.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bpc
from conftest import HAVE_GPU, HAVE_NUMBA_CUDA

pytestmark = pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed")

# Limits that make the simulator take the paths a GPU takes at real sizes:
# reductions with up to 8 cooperating threads (one per element), tiled
# matmuls from the smallest product, and at most 2 blocks per grid.
TREE = dict(block=8, lane_work=1, max_blocks=2, warp=4)
TILED = dict(tile=4, tiled_min_work=0, max_blocks=2)


def cuda_fn(inputs, outputs, updates=None, **limits):
    return bpc.function(inputs, outputs, updates=updates, target="cuda", **limits)


def test_reductions_longer_than_a_block_use_a_shared_memory_tree():
    x = bpc.input("x", (None, 37), dtype="float64")
    y = bpc.input("y", (None, 3, 5), dtype="float32")
    k = bpc.input("k", (None, 11), dtype="int64")
    outs = [bpc.sum(x, axis=1),                 # rows: 37 elements per output, block of 8
            bpc.sum(x, axis=0),                 # columns: over the batch (13)
            bpc.mean(x),                        # everything into one output
            bpc.max(x, axis=1, keepdims=True),
            bpc.sum(y, axis=(0, 2)),            # two reduced axes around a kept one
            bpc.max(y, axis=0),
            bpc.sum(k, axis=1)]                 # integer sums stay int64
    f = cuda_fn([x, y, k], outs, **TREE)
    rng = np.random.default_rng(0)
    xv, yv = rng.normal(size=(13, 37)), rng.normal(size=(13, 3, 5)).astype(np.float32)
    kv = rng.integers(-50, 50, (13, 11))
    got = f(xv, yv, kv)
    want = [xv.sum(1), xv.sum(0), xv.mean(), xv.max(1, keepdims=True), yv.sum((0, 2)), yv.max(0), kv.sum(1)]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-6 if w.dtype == np.float32 else 1e-12)
    # The tree really ran: several threads per output, fewer threads than elements.
    backend = f.backend
    launches = {name: block for name, _, block in backend.describe_launches(13)}
    reduce_blocks = [launches[s.name] for s in backend.specs if s.form == "reduce"]
    assert all(isinstance(b, tuple) and b[0] * b[1] == 8 for b in reduce_blocks)
    assert max(max(b) for b in reduce_blocks) == 8 < 37


def test_nan_propagates_through_relu_max_sum_and_argmax():
    x = bpc.input("x", (None, 9), dtype="float32")
    f = cuda_fn([x], [bpc.relu(x), bpc.max(x, axis=1), bpc.sum(x, axis=1), bpc.argmax(x, axis=1),
                      bpc.log(x)], **TREE)
    v = np.arange(27, dtype=np.float32).reshape(3, 9) - 4.0
    v[0, 5] = np.nan
    relu, mx, total, arg, logs = f(v)
    assert np.isnan(relu[0, 5]) and np.isnan(mx[0]) and np.isnan(total[0]) and arg[0] == 5
    assert mx[1] == 13.0 and total[2] == v[2].sum() and arg[1] == 8
    assert np.isnan(logs[0, 0]) and logs[0, 4] == -np.inf   # IEEE results, not exceptions


def test_float32_sums_accumulate_in_float64():
    x = bpc.input("x", (None,), dtype="float32")
    f = cuda_fn([x], bpc.sum(x), **TREE)
    v = np.full(30_011, 0.1, dtype=np.float32)
    exact = np.float32(np.sum(v, dtype=np.float64))
    running = np.float32(0)
    for chunk in np.split(v, [15_000]):   # what float32 partials would give (they drift)
        running += np.cumsum(chunk, dtype=np.float32)[-1]
    assert f(v) == exact and running != exact


def test_tiled_matmul_with_partial_tiles_and_transposed_operands():
    a = bpc.input("a", (None, 7), dtype="float64")
    w = bpc.input("w", (7, 9), dtype="float64")
    m = bpc.input("m", (6, 7), dtype="float64")
    y = bpc.input("y", (3, None, 5), dtype="float32")
    z = bpc.input("z", (15, 6), dtype="float32")
    outs = [a @ w,                                   # 13x7 @ 7x9: partial tiles on every edge
            a.T @ a,                                 # a transposed operand, the batch reduced
            m @ a.T,
            bpc.reshape(bpc.transpose(y, (1, 0, 2)), (None, 15)).T @ a,   # reshape of a transpose, transposed
            bpc.reshape(bpc.transpose(y, (1, 0, 2)), (None, 15)) @ z]     # float32, through the same view
    f = cuda_fn([a, w, m, y, z], outs, **TILED)
    rng = np.random.default_rng(1)
    av, wv, mv = rng.normal(size=(13, 7)), rng.normal(size=(7, 9)), rng.normal(size=(6, 7))
    yv, zv = rng.normal(size=(3, 13, 5)).astype(np.float32), rng.normal(size=(15, 6)).astype(np.float32)
    got = f(av, wv, mv, yv, zv)
    want = [av @ wv, av.T @ av, mv @ av.T, np.transpose(yv, (1, 0, 2)).reshape(13, 15).T @ av,
            np.transpose(yv, (1, 0, 2)).reshape(13, 15) @ zv]
    for g, w_ in zip(got, want):
        np.testing.assert_allclose(g, w_, rtol=1e-5 if g.dtype == np.float32 else 1e-12, atol=1e-5)
    tiled = [(grid, block) for name, grid, block in f.backend.describe_launches(13)
             if name.startswith("k") and block == (4, 4)]
    assert len(tiled) == 5 and all(grid == (min(2, -(-c // 4)), min(2, -(-r // 4)), 1)
                                   for (grid, _), (r, c) in zip(tiled, [w_.shape for w_ in want]))


def test_tiled_batched_matmul_broadcasts_and_sums_weight_gradients_over_the_batch():
    """Stacks of products along the grid's z axis (broadcast leading
    dimensions, partial tiles), and a weight's gradient summed over the batch
    in the product's own accumulator, tiled and untiled, match NumPy."""
    x = bpc.input("x", (None, 5, 7), dtype="float64")
    w = bpc.input("w", (7, 6), dtype="float64")
    s = bpc.input("s", (2, 1, 6, 5), dtype="float64")
    y = x @ w
    loss = bpc.sum(y * y) + bpc.sum(s @ x)
    gx, gw = bpc.grad(loss, [x, w])
    rng = np.random.default_rng(4)
    xv, wv, sv = rng.normal(size=(3, 5, 7)), rng.normal(size=(7, 6)), rng.normal(size=(2, 1, 6, 5))
    yv = xv @ wv
    want = [yv, sv @ xv, np.einsum("nmk,nmp->kp", xv, 2 * yv), 2 * yv @ wv.T + sv.sum(axis=(0, 1, 2))[:, None]]
    for limits in (TILED, TREE):
        f = cuda_fn([x, w, s], [y, s @ x, gw, gx], **limits)
        got = f(xv, wv, sv)
        for g, w_ in zip(got, want):
            np.testing.assert_allclose(g, w_, rtol=1e-12, atol=1e-12)
        kinds = [k.describe().split(": ", 1)[1] for k in f.backend.plan.kernels]
        assert "matmul [matmul, sum]" in kinds
        if limits is TILED:
            grids = [grid for _, grid, block in f.backend.describe_launches(3) if block == (4, 4)]
            # s @ x: 2 x 3 matrices of 6 x 7 (2 x 2 tiles), 2 blocks along z stepping over them;
            # w's gradient: one 7 x 6 matrix (the batch summed inside).
            assert (2, 2, 2) in grids and (2, 2, 1) in grids


def test_grid_stride_loops_views_and_random_numbers_cover_every_element():
    x = bpc.input("x", (None, 3, 7), dtype="float32")
    t = bpc.transpose(x, (0, 2, 1))                  # a view: no kernel, no copy
    r = bpc.reshape(t, (None, 21))                   # a reshape of that view: index arithmetic too
    out = [t * 2.0, r + 1.0, bpc.exp(bpc.transpose(r)), t, bpc.dropout(x, 0.4, seed=5)]
    f = cuda_fn([x], out, block=4, max_blocks=2)   # 8 threads for up to 231 elements
    xv = np.random.default_rng(2).normal(size=(11, 3, 7)).astype(np.float32)
    got = f(xv)
    tv = np.transpose(xv, (0, 2, 1))
    from test_ops import expected_dropout
    want = [tv * 2, tv.reshape(11, 21) + 1, np.exp(tv.reshape(11, 21).T), tv,
            expected_dropout(xv.astype(np.float64), 0.4, 5).astype(np.float32)]
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-6)
    kinds = [s.form for s in f.backend.specs]
    assert "random" in kinds and len(kinds) == len([k for k in f.backend.plan.kernels if k.form != "view"])


# ----- training, with parameters living on the device ------------------------------

def build_mlp(sizes=(12, 10, 5), seed=0):
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
    loss = bpc.softmax_cross_entropy(h, y)
    return x, y, params, loss


def test_sgd_training_matches_the_interpreter_with_params_on_the_device():
    X = np.random.default_rng(3).normal(size=(29, 12)).astype(np.float32)
    Y = np.random.default_rng(4).integers(0, 5, 29)
    runs = {}
    for target in ("interpret", "cuda"):
        x, y, params, loss = build_mlp()
        opt = bpc.optim.SGD(lr=0.2, momentum=0.9)
        step = bpc.function([x, y], loss, updates=opt.updates(loss, params), target=target)
        evaluate = bpc.function([x, y], loss, target=target)     # shares the params
        start = [p._value.copy() for p in params]
        losses = []
        for lo, hi in [(0, 13), (13, 26), (26, 29)]:               # the last batch is smaller
            losses.append(float(step(X[lo:hi], Y[lo:hi])))
            if target == "cuda":
                # Only the batch went in and the loss came out: the host copy
                # of the weights is untouched until someone reads `.value`.
                assert all(np.array_equal(p._value, s) for p, s in zip(params, start))
        losses.append(float(evaluate(X, Y)))                     # sees the trained weights
        runs[target] = (losses, [p.value.copy() for p in params], params, step)
    (ref_losses, ref_values, _, _), (losses, values, params, step) = runs["interpret"], runs["cuda"]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert losses[-1] < losses[0]
    for got, want in zip(values, ref_values):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Assigning `.value` on the host reaches the device copy.
    W0 = params[0]
    W0.value = np.zeros_like(W0.value)
    probe = bpc.function([bpc.input("q", (2, 12))], bpc.sum(W0 * 1.0), target="cuda")
    assert probe(np.zeros((2, 12), np.float32)) == 0.0


def test_updates_are_simultaneous_in_place_or_through_a_deferred_copy():
    """b's new value reads a's old value; an update that is also an output
    cannot be written in place and goes through a copy kernel at the end."""
    a = bpc.param("a", np.array([1.0, 2.0, 3.0]))
    b = bpc.param("b", np.array([10.0, 20.0, 30.0]))
    x = bpc.input("x", (3,), dtype="float64")
    f = bpc.function([x], [a * 1.0, a + x, a], updates={a: a + x, b: b + a * 2.0}, target="cuda")
    assert [s.form for s in f.backend.specs][-1] == "copy"
    old, new_a, snapshot = f(np.array([100.0, 100.0, 100.0]))
    np.testing.assert_allclose(old, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(snapshot, [1.0, 2.0, 3.0])      # a leaf output is its pre-step value
    np.testing.assert_allclose(new_a, [101.0, 102.0, 103.0])
    np.testing.assert_allclose(a.value, [101.0, 102.0, 103.0])
    np.testing.assert_allclose(b.value, [12.0, 24.0, 36.0])


def test_source_is_cached_on_disk_and_views_cost_no_kernel():
    x, y, params, loss = build_mlp(sizes=(12, 10, 10, 5))
    f = bpc.function([x, y], [loss, *bpc.grad(loss, params)], target="cuda")
    for (module, path), source in zip(f.backend.kernel_modules, f.backend.kernel_sources):
        with open(path, encoding="utf-8") as fh:
            assert fh.read() == source
    # One module per kernel structure: the two hidden layers' identical
    # kernels share theirs.
    assert f.source.count("@cuda.jit(cache=True)") == len(f.backend.kernel_sources) < len(f.backend.specs)
    assert len({s.module for s in f.backend.specs}) == len(f.backend.kernel_sources)
    assert "transpose" not in " ".join(s.describe for s in f.backend.specs)


# ----- no GPU, no simulator ---------------------------------------------------------------

def _clean_env(**extra):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")   # also stops conftest from switching it on
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


@pytest.mark.skipif(HAVE_GPU, reason="this machine has a GPU, so target='cuda' works without the simulator")
def test_without_gpu_or_simulator_the_error_names_both_remedies():
    code = textwrap.dedent("""
        import bpc
        x = bpc.input("x", (None, 3))
        try:
            bpc.function([x], x * 2.0, target="cuda")
        except bpc.errors.CompileError as e:
            print("ERROR:", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERROR:" in out.stdout and "CUDA GPU driver" in out.stdout and "NUMBA_ENABLE_CUDASIM=1" in out.stdout


# ----- PTX for a real GPU ---------------------------------------------------------------------

PTX_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import bpc
    from bpc.backends.cuda import ptx

    def mlp_step(optimizer):
        x = bpc.input("x", (None, 64)); y = bpc.input("y", (None,), dtype="int64")
        params, h = [], x
        for i, (a, b) in enumerate([(64, 32), (32, 32), (32, 10)]):
            W = bpc.param(f"W{i}", (a, b), init="he_normal", seed=i); c = bpc.param(f"b{i}", (b,), init="zeros")
            params += [W, c]
            h = h @ W + c
            if i < 2:
                h = bpc.dropout(bpc.relu(h), 0.2, seed=i)
        loss = bpc.softmax_cross_entropy(h, y)
        return bpc.function([x, y], loss, updates=optimizer.updates(loss, params), target="interpret")

    def single(build, *shapes):
        ins = [bpc.input(f"i{k}", s) for k, s in enumerate(shapes)]
        return bpc.function(ins, build(*ins), target="interpret")

    labels = bpc.input("labels", (None,), dtype="int64")
    logits = bpc.input("logits", (None, 10))
    graphs = {
        "mlp_sgd_step": mlp_step(bpc.optim.SGD(lr=0.1, momentum=0.9)),
        "mlp_adam_step": mlp_step(bpc.optim.Adam(lr=1e-3)),
        "softmax_cross_entropy": bpc.function([logits, labels], [bpc.softmax_cross_entropy(logits, labels),
                                              bpc.grad(bpc.softmax_cross_entropy(logits, labels), logits),
                                              bpc.argmax(logits, axis=-1)], target="interpret"),
        "dropout": single(lambda v: [bpc.dropout(v, 0.3, seed=7), bpc.grad(bpc.sum(bpc.dropout(v, 0.3) * v), v)],
                          (None, 33)),
    }
    # Every elementwise op's scalar formula, in float32, fused into a few kernels.
    x, y, v = bpc.input("x", (None, 6)), bpc.input("y", (None, 6)), bpc.input("v", (6,))
    k = bpc.input("k", (None, 6), dtype="int64")
    builders = {
        "add": lambda: x + y, "sub": lambda: x - y, "mul": lambda: x * y, "div": lambda: x / y,
        "neg": lambda: -x, "pow": lambda: bpc.abs(x) ** y, "exp": lambda: bpc.exp(x), "log": lambda: bpc.log(x),
        "sqrt": lambda: bpc.sqrt(x), "abs": lambda: bpc.abs(x), "square": lambda: bpc.square(x),
        "tanh": lambda: bpc.tanh(x), "sigmoid": lambda: bpc.sigmoid(x), "relu": lambda: bpc.relu(x),
        "softplus": lambda: bpc.softplus(x), "sign": lambda: bpc.sign(x), "stop_gradient": lambda: bpc.stop_gradient(x),
        "leaky_relu": lambda: bpc.leaky_relu(x, 0.1), "maximum": lambda: bpc.maximum(x, y),
        "minimum": lambda: bpc.minimum(x, 0.5), "where": lambda: bpc.where(x > y, x, 2.0),
        "equal": lambda: bpc.equal(k, 1), "not_equal": lambda: x != y, "less": lambda: x < y,
        "less_equal": lambda: x <= 0.5, "greater": lambda: x > y, "greater_equal": lambda: x >= y,
        "cast": lambda: bpc.cast(bpc.cast(x * 10.0, "int32"), "float32") + bpc.cast(k, "float32"),
        "broadcast_to": lambda: bpc.broadcast_to(v, (None, 6)) * x,
        "materialize": lambda: bpc.ops.scan_materialize(x * y),
    }
    from bpc.ops import OPS
    # (slice and unslice, read through by loops, are in the indexing graph below)
    assert set(builders) == {n for n, op in OPS.items() if op.iteration == "elementwise" and op.gather is None}, \
        "an op is missing here"
    terms = [b() for b in builders.values()]
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    cost = bpc.sum(total)
    graphs["every_elementwise_op"] = bpc.function([x, y, v, k], [total, *bpc.grad(cost, [x, y, v])],
                                                 target="interpret")
    # Convolution and pooling, forward and both gradients, float32.
    img = bpc.input("img", (None, 2, 9, 8))
    kern = bpc.param("kern", (4, 1, 3, 2), init="glorot_uniform", seed=3)
    feat = bpc.max_pool2d(bpc.relu(bpc.conv2d(img, kern, stride=(1, 2), padding=1, dilation=(2, 1), groups=2)), 2)
    graphs["cnn"] = bpc.function([img], [feat, *bpc.grad(bpc.sum(feat * feat), [img, kern])], target="interpret")
    # Batched products: broadcast stacks, and a weight's gradient summed over the batch.
    seq = bpc.input("seq", (None, 5, 6))
    proj = bpc.param("proj", (6, 4), init="glorot_uniform", seed=4)
    mix = bpc.param("mix", (3, 1, 4, 5), init="glorot_uniform", seed=5)
    stacked = mix @ bpc.tanh(seq @ proj)
    graphs["batched_matmul"] = bpc.function(
        [seq], [stacked, *bpc.grad(bpc.sum(stacked * stacked), [seq, proj, mix])], target="interpret")
    # Slicing, concat and take (embedding rows), with their gradients (take's: atomic adds).
    table = bpc.param("table", (9, 4), init="glorot_uniform", seed=6)
    tokens = bpc.input("tokens", (None, 5), dtype="int64")
    vecs = bpc.take(table, tokens)
    joined = bpc.concat([vecs[:, 1:, ::2], vecs[:, :-1, 1::2]], axis=2)
    graphs["indexing"] = bpc.function(
        [tokens], [joined, *bpc.grad(bpc.sum(joined * joined), [table])], target="interpret")
    # A scan: a recurrent layer's training step (the step's kernels, the
    # setup copies, the backward scan's gradient sums).
    rnn = bpc.nn.SimpleRNN(6, 5, seed=7)
    rnn_loss = bpc.mean(rnn(seq) ** 2)
    graphs["rnn_sgd_step"] = bpc.function([seq], rnn_loss, updates=bpc.optim.SGD(lr=0.1).updates(rnn_loss, rnn.params),
                                          target="interpret")
    counter = bpc.param("counter", np.zeros(3, np.float32))
    graphs["deferred_update"] = bpc.function([logits], counter + 1.0, updates={counter: counter + 1.0},
                                             target="interpret")
    report = {}
    for name, f in graphs.items():
        compiled = ptx.compile_program(f.program, cc=(9, 0))
        f64 = {k: sorted({full for _, full in ptx.f64_instructions(text)}) for k, (spec, text) in compiled.items()
               if not spec.float64_values and ptx.f64_instructions(text)}
        report[name] = {"kernels": len(compiled), "problems": ptx.float64_audit(compiled),
                        "float64_kernels": f64,
                        "kinds": sorted({spec.form for spec, _ in compiled.values()})}
    print(json.dumps(report))
""")


def test_every_kernel_compiles_to_ptx_and_float32_kernels_hold_no_float64_arithmetic(tmp_path):
    """compile_ptx needs the real numba.cuda (the simulator replaces it
    process-wide), so this runs in a fresh process without the simulator."""
    script = tmp_path / "ptx_check.py"
    script.write_text(PTX_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], env=_clean_env(BPC_CACHE_DIR=str(tmp_path)),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for name, r in report.items():
        assert r["kernels"] > 0 and r["problems"] == [], (name, r)
        # What float64 remains is exactly the accumulators of float sums.
        for kernel, instructions in r["float64_kernels"].items():
            assert "add.f64" in instructions and not {i.split(".")[0] for i in instructions} - {
                "add", "sub", "div", "cvt", "mov", "ld", "st", "selp"}, (name, kernel, instructions)
    assert {"loop", "reduce", "matmul", "random"} <= set(report["mlp_sgd_step"]["kinds"])
    assert {"loop", "reduce", "matmul", "random", "size_of", "argmax", "copy", "conv2d", "conv2d_grad_input",
            "conv2d_grad_weight", "max_pool2d", "max_pool2d_grad", "concat", "take",
            "take_grad"} == {kind for r in report.values() for kind in r["kinds"]}
    assert report["mlp_adam_step"]["float64_kernels"], "the audit saw no accumulator at all"

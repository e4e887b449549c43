"""Training-step benchmark: one SGD step of an MLP, interpreted vs compiled.

For each workload (an MLP with ReLU, mean softmax cross-entropy, plain SGD
updates `p - lr * g` written with `bpc.grad`, float32) it measures, in one
run:

  interpreted   bpc's `interpret` target (NumPy, op by op), per step
  compiled      the compiled target (`cpu` by default, or `cuda`), per step
  ratio         interpreted / compiled, paired round by round
  cold compile  build + first call in a fresh process with an empty cache
                (BPC_CACHE_DIR set to a new temporary folder)
  warm start    a fresh process with that cache populated: from the
                script's first line (imports included) to the end of the
                first call; `warm_process_s` adds interpreter start-up
  GEMM-only     the step's matrix products alone: the same np.dot calls
                (same shapes, same transposed views) in one njit function
                with preallocated outputs, the same BLAS (SciPy's OpenBLAS)
  numpy/torch/jax  a hand-written NumPy step, PyTorch eager and JAX jit on
                the same step, each in its own process, when installed

Times are per step: each measurement runs `rounds` rounds of enough calls to
last `min_round_s`; the reported value is the median over rounds with the
quartiles as the spread. bpc's interpreted, compiled and GEMM-only steps
run round-robin (one round of each in turn) so that load from other
processes hits them alike; their ratios come from the same rounds.

    python bench/mlp_step.py                       # tiny, medium, large
    python bench/mlp_step.py --model tiny --quick  # a short run
    bpc bench ...                                  # the same, plus the scaling study

Results: a table on stdout; JSON, CSV and a PNG in --out.
"""
import time

T0 = time.perf_counter()   # warm start is measured from here (before importing bpc)

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402

import bpc  # noqa: E402
from bpc.graph.traverse import topo_sort  # noqa: E402
from bpc.models import WORKLOADS, ModelError, load as load_model  # noqa: E402

LR = 0.01
DEFAULT_WORKLOADS = ("tiny", "medium", "large")
COMPARE = ("numpy", "torch", "jax")
HERE = os.path.dirname(os.path.abspath(__file__))


# ----- statistics --------------------------------------------------------------------------

def summarize(samples):
    """Median, quartiles, min and max of per-step times (seconds)."""
    a = np.asarray(samples, dtype=float)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "min": float(a.min()),
            "max": float(a.max()), "rounds": int(a.size)}


def fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_stat(st):
    """'31.0 µs ±3%': median and half the interquartile range."""
    if not st:
        return "-"
    spread = (st["q3"] - st["q1"]) / 2 / st["median"] * 100 if st["median"] else 0.0
    return f"{fmt_time(st['median'])} ±{spread:.0f}%"


# ----- timing ------------------------------------------------------------------------------

def calls_per_round(fn, min_round_s):
    """Warm `fn` up (first calls compile or fill caches) and choose how many
    calls make a round of at least `min_round_s`."""
    # Warm-up: at least 3 calls and 0.1 s (PyTorch's first steps are ~100x slower).
    start, calls = time.perf_counter(), 0
    while calls < 3 or (time.perf_counter() - start < 0.1 and calls < 1000):
        fn()
        calls += 1
    times = []
    for _ in range(5):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    one = max(float(np.median(times)), 1e-7)
    return max(1, int(np.ceil(min_round_s / one)))


def measure(fns, rounds, min_round_s, tick=None):
    """Per-call times of each function in `fns` ({name: fn}): `rounds`
    rounds, round-robin over the functions. Returns {name: [seconds per call
    in each round]}."""
    counts = {name: calls_per_round(fn, min_round_s) for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = counts[name]
            t = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t) / n)
            if tick:
                tick()
    return samples, counts


# ----- the steps ----------------------------------------------------------------------------

def sgd_step(spec, target, lr=LR, **options):
    """One compiled SGD training step of a model: returns (function, graph).
    The function takes (X, Y), returns the loss and updates the params."""
    g = spec.graph()
    grads = bpc.grad(g.loss, g.params)
    updates = {p: p - lr * gr for p, gr in zip(g.params, grads)}
    return bpc.function([g.x, g.y], g.loss, updates=updates, target=target, name="sgd_step",
                        **options), g


_GEMM_CACHE = {}


def gemm_bound(function, batch, seed=0):
    """The step's matrix products alone, as one njit function with
    preallocated outputs: returns (callable, list of 'a[T] @ b[T] -> out'
    descriptions), or (None, reason) when some product is not 2-d."""
    from numba import njit
    rng = np.random.default_rng(seed)
    products = [n for n in topo_sort(function.program.roots) if n.op is not None and n.op.name == "matmul"]
    if not products:
        return None, "the step has no matrix products"
    args, names, lines, desc = [], [], [], []

    def operand(t, k):
        shape = tuple(batch if d is None else d for d in t.shape)
        if len(shape) != 2:
            raise ValueError(f"{t.ndim}-d operand")
        transposed = t.op is not None and t.op.name == "transpose"
        base = shape[::-1] if transposed else shape
        args.append(rng.normal(size=base).astype(t.dtype))
        names.append(k)
        return (k + ".T" if transposed else k), f"{shape[0]}x{shape[1]}" + ("ᵀ" if transposed else "")

    try:
        for i, n in enumerate(products):
            ea, da = operand(n.inputs[0], f"a{i}")
            eb, db = operand(n.inputs[1], f"b{i}")
            out = tuple(batch if d is None else d for d in n.shape)
            args.append(np.empty(out, dtype=n.dtype))
            names.append(f"o{i}")
            lines.append(f"    np.dot({ea}, {eb}, o{i})")
            desc.append(f"{da} @ {db}")
    except ValueError as e:
        return None, f"GEMM bound needs 2-d products ({e})"
    src = f"def gemm_only({', '.join(names)}):\n" + "\n".join(lines) + "\n    return 0\n"
    fn = _GEMM_CACHE.get(src)
    if fn is None:
        ns = {"np": np}
        exec(compile(src, "<bpc-bench-gemm>", "exec"), ns)
        fn = _GEMM_CACHE[src] = njit(nogil=True)(ns["gemm_only"])
    return (lambda: fn(*args)), desc


# ----- machine and threads ------------------------------------------------------------------

def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba
    import scipy
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "bpc": bpc.__version__, "numba": numba.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__}
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    return info


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def busy_warning(threads, loads):
    """A warning when other processes kept the cores busy during a run with
    several threads: OpenBLAS's and PyTorch's thread teams then stall."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    worst = max((load[0] for load in loads if load), default=0.0)
    if threads == 1 or cores is None or worst < cores:
        return None
    return (f"the machine was busy (1-minute load average up to {worst:.1f} on {cores} cores) and BLAS ran with "
            "several threads, which stall when a core is taken; --threads 1 gives steadier numbers")


def thread_info():
    """Numba's threading layer and thread count, and every BLAS pool. Call
    it after the measurements: it starts Numba's thread pool (if nothing
    parallel ran yet) to learn which layer loads."""
    import numba
    try:
        from numba.np.ufunc.parallel import _launch_threads
        _launch_threads()
    except Exception:   # a private helper; without it the layer may read "not started"
        pass
    try:
        layer = numba.threading_layer()
    except ValueError:   # no parallel region has run in this process
        layer = None
    info = {"numba_threads": numba.get_num_threads(),
            "numba_threading_layer": layer,
            "numba_threading_layer_config": str(numba.config.THREADING_LAYER),
            "numba_threading_layer_priority": list(getattr(numba.config, "THREADING_LAYER_PRIORITY", [])),
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER",
                                                "OMP_WAIT_POLICY") if k in os.environ}}
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [{k: p.get(k) for k in ("internal_api", "num_threads", "version", "threading_layer",
                                                "filepath")} for p in threadpool_info()]
    except ImportError:
        info["blas"] = "threadpoolctl not installed"
    return info


def describe_threads(info):
    layer = info["numba_threading_layer"] or (
        f"not started (no parallel loop ran; would pick from {info['numba_threading_layer_priority']})")
    blas = info["blas"]
    if isinstance(blas, list):
        blas = ", ".join(f"{os.path.basename(p['filepath'] or '?')}: {p['num_threads']} threads" for p in blas)
    return f"numba: {info['numba_threads']} threads, layer {layer}; BLAS: {blas}"


def set_threads(n):
    """n threads for Numba and for every BLAS. SciPy's OpenBLAS (the one
    compiled code calls) is loaded first, so that the limit reaches it too."""
    if n:
        import scipy.linalg.cython_blas  # noqa: F401
        bpc.set_num_threads(n)


# ----- child processes ------------------------------------------------------------------------

class BenchError(RuntimeError):
    """A benchmark process failed (its last error line is the message)."""


def run_child(argv, env=None, tick=None, timeout=3600):
    """Run this script as a child process; returns (its JSON result, wall
    seconds). Lines "#tick" on its stdout advance the progress bar."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv], stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env)
        result = None
        try:
            for line in proc.stdout:
                if line.startswith("#tick"):
                    if tick:
                        tick()
                elif line.startswith("{"):
                    result = line
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.perf_counter() - t
        if proc.returncode != 0 or result is None:
            err.seek(0)
            lines = [ln for ln in err.read().strip().splitlines() if ln.strip()]
            raise BenchError(f"the {argv[1]} process for {argv[3]} failed (exit {proc.returncode}): "
                             + (lines[-1].strip() if lines else "no output"))
    return json.loads(result), wall


def _print_tick():
    print("#tick", flush=True)


def child_step(args):
    """In a fresh process: build the step and call it once (where the time
    went is the cold compile or the warm start); with --child measure, then
    time it against the interpreter and the GEMM-only bound."""
    imported = time.perf_counter() - T0
    set_threads(args.threads)
    spec = load_model(args.model)
    t = time.perf_counter()
    fn, _ = sgd_step(spec, args.target)     # first, exactly as in the cold process: same cache key
    built = time.perf_counter() - t
    X, Y = spec.sample_batch(args.batch)
    t = time.perf_counter()
    fn(X, Y)
    first = time.perf_counter() - t
    backend = fn.backend
    out = {"startup": {"import_s": imported, "build_s": built, "first_call_s": first,
                       "since_start_s": time.perf_counter() - T0,
                       "compile_seconds": {str(k): v for k, v in getattr(backend, "compile_seconds", {}).items()},
                       "codegen_seconds": getattr(backend, "codegen_seconds", None)}}
    if args.child == "measure":
        plan = getattr(backend, "plan", None)
        out["kernels"] = len(plan.kernels) if plan is not None else None
        interp, _ = sgd_step(spec, "interpret")
        fns = {"interpreted": lambda: interp(X, Y), "compiled": lambda: fn(X, Y)}
        out["notes"] = []
        if args.target in ("cpu", "interpret"):
            gemm, desc = gemm_bound(fn, args.batch)
            if gemm is None:
                out["notes"].append(f"GEMM-only bound skipped: {desc}")
            else:
                fns["gemm_only"] = gemm
                out["gemm_products"] = desc
        else:
            out["notes"].append(f"GEMM-only bound (CPU BLAS) not measured for target {args.target}")
        out["samples"], out["calls_per_round"] = measure(fns, args.rounds, args.min_round_s, _print_tick)
        out["threads"] = thread_info()
    print(json.dumps(out))


def _init_params(layers, rng):
    Ws = [(rng.normal(size=(a, b)) * np.sqrt(2.0 / a)).astype(np.float32) for a, b in zip(layers[:-1], layers[1:])]
    bs = [np.zeros(b, np.float32) for b in layers[1:]]
    return Ws, bs


def numpy_step(layers, X, Y, lr=LR):
    """A hand-written NumPy SGD step of the ReLU MLP (forward, backward, update)."""
    Ws, bs = _init_params(layers, np.random.default_rng(0))
    rows = np.arange(len(X))
    lr = np.float32(lr)

    def step():
        acts = [X]
        h = X
        for i, (W, b) in enumerate(zip(Ws, bs)):
            z = h @ W
            z += b
            h = np.maximum(z, 0, out=z) if i < len(Ws) - 1 else z
            acts.append(h)
        z = acts[-1]
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.log(p[rows, Y]).mean()
        d = p
        d[rows, Y] -= 1
        d /= np.float32(len(X))
        for i in range(len(Ws) - 1, -1, -1):
            gW = acts[i].T @ d
            gb = d.sum(axis=0)
            if i > 0:
                d = (d @ Ws[i].T) * (acts[i] > 0)
            Ws[i] -= lr * gW
            bs[i] -= lr * gb
        return loss
    return step


def torch_step(layers, X, Y, lr=LR):
    import torch
    import torch.nn.functional as F
    Ws, bs = _init_params(layers, np.random.default_rng(0))
    params = [torch.tensor(a, requires_grad=True) for pair in zip(Ws, bs) for a in pair]
    x, y = torch.from_numpy(X), torch.from_numpy(Y)

    def step():
        h = x
        for i in range(0, len(params), 2):
            h = h @ params[i] + params[i + 1]
            if i < len(params) - 2:
                h = torch.relu(h)
        loss = F.cross_entropy(h, y)
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= lr * p.grad
                p.grad = None
        return loss
    return step


def jax_step(layers, X, Y, lr=LR):
    import jax
    import jax.numpy as jnp
    Ws, bs = _init_params(layers, np.random.default_rng(0))
    state = [[jnp.asarray(w), jnp.asarray(b)] for w, b in zip(Ws, bs)]
    x, y = jnp.asarray(X), jnp.asarray(Y)

    def loss_fn(params, x, y):
        h = x
        for i, (W, b) in enumerate(params):
            h = h @ W + b
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        logp = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def update(params, x, y):
        loss, g = jax.value_and_grad(loss_fn)(params, x, y)
        return jax.tree_util.tree_map(lambda p, d: p - lr * d, params, g), loss

    box = [state]

    def step():
        box[0], loss = update(box[0], x, y)
        return loss.block_until_ready()
    return step


def framework_threads(name, n):
    """Thread settings a comparison child ran with."""
    if name == "torch":
        import torch
        if n:
            torch.set_num_threads(n)
        return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()}
    if name == "jax":
        import jax
        return {"jax_devices": [str(d) for d in jax.devices()], "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    if n:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n, user_api="blas")
    from threadpoolctl import threadpool_info
    return {"blas_threads": [p["num_threads"] for p in threadpool_info()]}


def child_framework(args):
    """Time one comparison framework's step in this (fresh) process."""
    layers = tuple(int(v) for v in args.layers.split("-"))
    threads = framework_threads(args.child, args.threads)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.batch, layers[0])).astype(np.float32)
    Y = rng.integers(0, layers[-1], args.batch).astype(np.int64)
    step = {"numpy": numpy_step, "torch": torch_step, "jax": jax_step}[args.child](layers, X, Y)
    samples, counts = measure({"step": step}, args.rounds, args.min_round_s, _print_tick)
    print(json.dumps({"samples": samples["step"], "calls_per_round": counts["step"], "threads": threads}))


def framework_available(name):
    import importlib.util
    return name == "numpy" or importlib.util.find_spec(name) is not None


def child_env(threads=None, cache_dir=None, framework=None):
    env = dict(os.environ)
    if threads:
        env["OPENBLAS_NUM_THREADS"] = str(threads)
    if cache_dir:
        env["BPC_CACHE_DIR"] = cache_dir
    if framework == "jax":
        env.setdefault("JAX_PLATFORMS", "cpu")
        if threads == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    return env


# ----- one workload -------------------------------------------------------------------------

def bench_workload(name, model, batch, target="cpu", threads=None, compare=COMPARE, rounds=15,
                   min_round_s=0.05, startup=True, progress=None):
    """Measure one workload (each part in a fresh process); returns its
    result dict."""
    note = progress.set_description if progress is not None else (lambda s: None)
    tick = progress.update if progress is not None else None
    spec = load_model(model)
    res = {"workload": name, "model": spec.name, "layers": list(spec.layers) if spec.layers else None,
           "batch": batch, "target": target, "dtype": spec.dtype, "lr": LR, "results": {}, "notes": [],
           "load_before": load_average()}
    common = ["--model", model, "--batch", str(batch), "--target", target] + (
        ["--threads", str(threads)] if threads else [])
    cache = tempfile.mkdtemp(prefix="bpc-bench-cache-")
    try:
        if startup:
            note(f"{name}: cold compile")
            cold, cold_wall = run_child(["--child", "startup", *common], child_env(threads, cache))
            res["cold"] = dict(cold["startup"], process_s=cold_wall)
            res["cold_compile_s"] = cold["startup"]["build_s"] + cold["startup"]["first_call_s"]
            if tick:
                tick()
        note(f"{name}: {'warm start + ' if startup else ''}step times")
        out, wall = run_child(["--child", "measure", *common, "--rounds", str(rounds),
                               "--min-round-s", str(min_round_s)], child_env(threads, cache), tick)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if startup:
        res["warm"] = dict(out["startup"], process_s=None)
        res["warm_start_s"] = out["startup"]["since_start_s"]
    else:
        res["cold"] = dict(out["startup"])
        res["cold_compile_s"] = out["startup"]["build_s"] + out["startup"]["first_call_s"]
        res["warm_start_s"] = None
        res["notes"].append("warm start not measured (--no-startup); cold compile from the measuring process")
    samples = out["samples"]
    for k, v in samples.items():
        res["results"][k] = dict(summarize(v), calls_per_round=out["calls_per_round"][k])
    res["ratio"] = summarize(np.array(samples["interpreted"]) / np.array(samples["compiled"]))
    if "gemm_only" in samples:
        res["compiled_over_gemm"] = summarize(np.array(samples["compiled"]) / np.array(samples["gemm_only"]))
        res["gemm_products"] = out["gemm_products"]
    res["kernels"] = out["kernels"]
    res["threads"] = out["threads"]
    res["notes"] += out["notes"]

    for fw in compare:
        note(f"{name}: {fw}")
        if not spec.layers or spec.activation != "relu" or spec.loss != "softmax_cross_entropy":
            res["notes"].append(f"{fw} skipped: comparisons are written for built-in ReLU MLPs only")
        elif not framework_available(fw):
            res["notes"].append(f"{fw} skipped: not installed")
        else:
            child = ["--child", fw, "--layers", "-".join(map(str, spec.layers)), "--batch", str(batch),
                     "--rounds", str(rounds), "--min-round-s", str(min_round_s)] + (
                ["--threads", str(threads)] if threads else [])
            try:
                got, _ = run_child(child, child_env(threads, framework=fw), tick)
                res["results"][fw] = dict(summarize(got["samples"]), calls_per_round=got["calls_per_round"],
                                          threads=got["threads"])
                continue
            except Exception as e:   # a broken install must not lose the rest of the run
                res["notes"].append(f"{fw} failed: {e}")
        if tick:
            tick(rounds)
    res["load_after"] = load_average()
    return res


# ----- reporting ----------------------------------------------------------------------------

COLUMNS = ["interpreted", "compiled", "gemm_only", "numpy", "torch", "jax"]


def format_table(results):
    head = ["workload", "model", "batch", "interpreted", "compiled", "interp/comp", "cold compile",
            "warm start", "GEMM-only", "comp/GEMM", "numpy", "torch", "jax"]
    rows = []
    for r in results:
        R = r["results"]
        ratio = r.get("ratio")
        cg = r.get("compiled_over_gemm")
        rows.append([r["workload"], r["model"], str(r["batch"]), fmt_stat(R.get("interpreted")),
                     fmt_stat(R.get("compiled")),
                     f"{ratio['median']:.2f}x" if ratio else "-",
                     fmt_time(r.get("cold_compile_s")), fmt_time(r.get("warm_start_s")),
                     fmt_stat(R.get("gemm_only")), f"{cg['median']:.2f}x" if cg else "-",
                     fmt_stat(R.get("numpy")), fmt_stat(R.get("torch")), fmt_stat(R.get("jax"))])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


CSV_FIELDS = ["workload", "model", "batch", "target", "threads"] + [
    f"{c}_{s}" for c in COLUMNS for s in ("median_s", "q1_s", "q3_s")] + [
    "ratio_median", "ratio_q1", "ratio_q3", "compiled_over_gemm_median", "cold_compile_s", "warm_start_s",
    "warm_process_s"]


def csv_rows(results):
    for r in results:
        row = {"workload": r["workload"], "model": r["model"], "batch": r["batch"], "target": r["target"],
               "threads": r.get("threads", {}).get("numba_threads")}
        for c in COLUMNS:
            st = r["results"].get(c)
            for s, key in (("median_s", "median"), ("q1_s", "q1"), ("q3_s", "q3")):
                row[f"{c}_{s}"] = st[key] if st else ""
        for s in ("median", "q1", "q3"):
            row[f"ratio_{s}"] = r["ratio"][s] if r.get("ratio") else ""
        row["compiled_over_gemm_median"] = r["compiled_over_gemm"]["median"] if r.get("compiled_over_gemm") else ""
        for k in ("cold_compile_s", "warm_start_s", "warm_process_s"):
            row[k] = "" if r.get(k) is None else r[k]
        yield row


def plot(results, path):
    """Bars of step time per workload and method (log scale)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(2.8 + 2.6 * len(results), 4.0), layout="constrained")
    ax = fig.subplots()
    present = [c for c in COLUMNS if any(c in r["results"] for r in results)]
    width = 0.8 / max(len(present), 1)
    for j, c in enumerate(present):
        xs = [i + (j - (len(present) - 1) / 2) * width for i, r in enumerate(results) if c in r["results"]]
        st = [r["results"][c] for r in results if c in r["results"]]
        med = np.array([s["median"] for s in st])
        err = np.array([[s["median"] - s["q1"] for s in st], [s["q3"] - s["median"] for s in st]])
        ax.bar(xs, med, width, yerr=err, label=c.replace("_", "-"), capsize=2)
    ax.set_xticks(range(len(results)), [f"{r['workload']}\n{r['model']}\nbatch {r['batch']}" for r in results],
                  fontsize="small")
    ax.set_yscale("log")
    ax.set_ylabel("seconds per training step (median, IQR)")
    ax.set_title("bpc training step: interpreted vs compiled")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.savefig(path, dpi=100)
    return path


def write_results(report, out_dir, stem="mlp_step"):
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, stem + ".json"), "csv": os.path.join(out_dir, stem + ".csv")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1)
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        w.writeheader()
        w.writerows(csv_rows(report["workloads"]))
    try:
        paths["png"] = plot(report["workloads"], os.path.join(out_dir, stem + ".png"))
    except ImportError:
        report["notes"].append("no PNG: matplotlib is not installed")
    return paths


def resolve_workloads(models, batch_size=None):
    """[(name, model, batch)] from workload names, mlp:... names or model files."""
    out = []
    for m in models or DEFAULT_WORKLOADS:
        if m in WORKLOADS:
            model, batch = WORKLOADS[m]
            out.append((m, model, batch_size or batch))
        else:
            spec = load_model(m)    # fails early and clearly on a bad name or file
            known = {v[0]: k for k, v in WORKLOADS.items()}
            name = known.get(spec.name, spec.name)
            batch = batch_size or (WORKLOADS[name][1] if name in WORKLOADS else 32)
            out.append((name, m, batch))
    return out


def run(models=None, batch_size=None, target="cpu", threads=None, compare=COMPARE, rounds=15,
        min_round_s=0.05, startup=True, out_dir=None, progress=True, echo=print):
    """Run the benchmark; returns the report dict (and writes files to out_dir)."""
    workloads = resolve_workloads(models, batch_size)
    compare = [c for c in compare if c]
    steps_per = (1 if startup else 0) + rounds * (1 + len(compare))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps_per * len(workloads), unit="step", desc="bench", disable=None, leave=False)
    report = {"benchmark": "mlp_step", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine_info(), "settings": {"target": target, "threads": threads, "rounds": rounds,
                                                     "min_round_s": min_round_s, "compare": compare,
                                                     "lr": LR, "optimizer": "sgd"},
              "workloads": [], "notes": []}
    try:
        for name, model, batch in workloads:
            report["workloads"].append(bench_workload(name, model, batch, target, threads, compare, rounds,
                                                      min_round_s, startup, bar))
    finally:
        if bar is not None:
            bar.close()
    # Thread setup as the measuring processes saw it (the same for every workload).
    report["threads"] = report["workloads"][0]["threads"] if report["workloads"] else thread_info()
    report["notes"].append("per-step times: median over rounds, spread = half the interquartile range; "
                           "the machine may be shared, so compare ratios from one run")
    loaded = busy_warning(threads, [r["load_before"] for r in report["workloads"]])
    if loaded:
        report["notes"].append(loaded)
        echo(f"note: {loaded}")
    echo(format_table(report["workloads"]))
    echo(f"threads: {describe_threads(report['threads'])}")
    for r in report["workloads"]:
        for n in r["notes"]:
            echo(f"note ({r['workload']}): {n}")
    if out_dir:
        paths = write_results(report, out_dir)
        echo("wrote " + ", ".join(paths.values()))
    return report


def add_arguments(ap):
    ap.add_argument("--model", action="append", metavar="MODEL",
                    help="workload name (tiny, medium, large), mlp:... or a model file; repeatable "
                         "(default: tiny, medium and large)")
    ap.add_argument("--batch-size", type=int, default=None, help="batch size (default: the workload's)")
    ap.add_argument("--target", default="cpu", choices=["cpu", "cuda", "interpret"],
                    help="the compiled side (default cpu; interpret only to test the harness)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for bpc's parallel loops and BLAS (and torch/numpy); default: Numba's")
    ap.add_argument("--compare", default=",".join(COMPARE),
                    help="comparison steps run when installed: numpy,torch,jax or none (default: all)")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds per measurement (default 15)")
    ap.add_argument("--min-round-s", type=float, default=0.05, help="minimum seconds per round (default 0.05)")
    ap.add_argument("--quick", action="store_true", help="a very short run (3 rounds of >= 5 ms)")
    ap.add_argument("--no-startup", action="store_true", help="skip the cold-compile and warm-start processes")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--out", default=None, metavar="DIR", help="folder for mlp_step.json/.csv/.png")


def parse_compare(text):
    if text.strip().lower() in ("", "none"):
        return []
    items = [c.strip().lower() for c in text.split(",") if c.strip()]
    bad = [c for c in items if c not in COMPARE]
    if bad:
        raise ValueError(f"--compare: unknown {', '.join(bad)}; choose from {', '.join(COMPARE)} or none")
    return items


def check_args(args):
    """Validate parsed options; raises ValueError with a clear message."""
    for name in ("batch_size", "threads", "rounds"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    if args.min_round_s <= 0:
        raise ValueError(f"--min-round-s must be positive, got {args.min_round_s}")
    if args.quick:
        args.rounds, args.min_round_s = min(args.rounds, 3), min(args.min_round_s, 0.005)
    return parse_compare(args.compare)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--layers", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child in ("startup", "measure"):
        args.model = args.model[0]
        return child_step(args)
    if args.child:
        return child_framework(args)
    try:
        compare = check_args(args)
        resolve_workloads(args.model, args.batch_size)
    except (ValueError, ModelError) as e:
        ap.error(str(e))
    run(args.model, args.batch_size, args.target, args.threads, compare, args.rounds, args.min_round_s,
        not args.no_startup, args.out or "bench_results", not args.no_progress)


if __name__ == "__main__":
    main()

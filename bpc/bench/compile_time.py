"""Compile-time study: how long a new user waits for the first step.

Each case builds a training (or forward) function and calls it once, in a
fresh process with an empty cache (`BPC_CACHE_DIR` a new folder: "cold"),
then again in a second fresh process on that cache ("warm"). Reported per
case: seconds from the start of the process to the end of the first call
(imports included), of which building the function (graph, gradients,
passes, code generation) and the first call (compiling or loading kernels,
running the step), and how many kernel modules the step has.

Cases (the sizes of bpc's compile-time issue):

  mlp:L     tanh MLP, L hidden layers of width 64, Adam, softmax
            cross-entropy, batch 32 (the hidden layers are identical)
  chain:K   K elementwise ops in a chain, summed (forward only)
  params:P  P separate (16,) params, loss = sum_i sum(tanh(x * p_i)), SGD
  lstm:T    an LSTM cell (hidden 32) unrolled over T steps, Adam

    python -m bpc.bench.compile_time                 # every case
    python -m bpc.bench.compile_time --case mlp:16 --case chain:300

Results: a table on stdout; compile_time.json and compile_time.png in --out.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

DEFAULT_CASES = ("mlp:2", "mlp:4", "mlp:8", "mlp:16", "mlp:24", "chain:50", "chain:100", "chain:300",
                 "params:100", "params:200", "lstm:8")


def build(case):
    """(function, arguments) for a case name."""
    import numpy as np
    import bpc
    kind, n = case.split(":")
    n = int(n)
    rng = np.random.default_rng(0)
    if kind == "mlp":
        x, y = bpc.input("x", (None, 64)), bpc.input("y", (None,), dtype="int64")
        h, params = x, []
        for i in range(n + 1):
            out = 64 if i < n else 10
            W = bpc.param(f"W{i}", (64, out), init="glorot_uniform", seed=i)
            b = bpc.param(f"b{i}", (out,), init="zeros")
            h = h @ W + b
            h = bpc.tanh(h) if i < n else h
            params += [W, b]
        loss = bpc.softmax_cross_entropy(h, y)
        f = bpc.function([x, y], loss, updates=bpc.optim.Adam(1e-3).updates(loss, params))
        return f, (rng.normal(size=(32, 64)).astype(np.float32), rng.integers(0, 10, 32))
    if kind == "chain":
        x = bpc.input("x", (None, 64))
        h = x
        for i in range(n):
            h = (bpc.tanh(h), bpc.sigmoid(h), h * 0.5 + 0.1)[i % 3] if i % 3 != 2 else h * 0.5 + 0.1
        return bpc.function([x], bpc.sum(h)), (rng.normal(size=(32, 64)).astype(np.float32),)
    if kind == "params":
        x = bpc.input("x", (None, 16))
        params = [bpc.param(f"p{i}", (16,), init="zeros") for i in range(n)]
        loss = sum((bpc.sum(bpc.tanh(x * p)) for p in params[1:]), bpc.sum(bpc.tanh(x * params[0])))
        grads = bpc.grad(loss, params)
        f = bpc.function([x], loss, updates={p: p - 0.01 * g for p, g in zip(params, grads)})
        return f, (rng.normal(size=(32, 16)).astype(np.float32),)
    if kind == "lstm":
        hidden, features = 32, 16
        xs = [bpc.input(f"x{t}", (None, features)) for t in range(n)]
        y = bpc.input("y", (None,), dtype="int64")
        gates = [(bpc.param(f"Wx{k}", (features, hidden), init="glorot_uniform", seed=j),
                  bpc.param(f"Wh{k}", (hidden, hidden), init="glorot_uniform", seed=10 + j),
                  bpc.param(f"b{k}", (hidden,), init="zeros")) for j, k in enumerate("ifgo")]
        Wo = bpc.param("Wo", (hidden, 10), init="glorot_uniform", seed=2)
        h = c = None
        for t in range(n):
            i, f_, g, o = (xs[t] @ Wx + b if h is None else xs[t] @ Wx + h @ Wh + b for Wx, Wh, b in gates)
            c = bpc.sigmoid(i) * bpc.tanh(g) if c is None else bpc.sigmoid(f_) * c + bpc.sigmoid(i) * bpc.tanh(g)
            h = bpc.sigmoid(o) * bpc.tanh(c)
        loss = bpc.softmax_cross_entropy(h @ Wo, y)
        params = [p for gate in gates for p in gate] + [Wo]
        f = bpc.function(xs + [y], loss, updates=bpc.optim.Adam(1e-3).updates(loss, params))
        return f, tuple(rng.normal(size=(32, features)).astype(np.float32) for _ in range(n)) + (
            rng.integers(0, 10, 32),)
    raise ValueError(f"unknown case {case!r}; expected mlp:L, chain:K, params:P or lstm:T")


def child(case, t0):
    """In a fresh process: build the case and call it once; print JSON."""
    imported = time.perf_counter() - t0
    t = time.perf_counter()
    f, args = build(case)
    built = time.perf_counter() - t
    t = time.perf_counter()
    f(*args)
    first = time.perf_counter() - t
    compiles = getattr(f.backend, "compiles", {}).get("serial", [])
    print(json.dumps({"case": case, "import_s": imported, "build_s": built, "first_call_s": first,
                      "total_s": time.perf_counter() - t0, "kernel_modules": len(compiles),
                      "compiled": sum(c.how == "compiled" for c in compiles),
                      "numba_s": sum(c.seconds for c in compiles),
                      "llvm_s": sum(c.llvm_seconds for c in compiles)}))


def run_case(case, cache, timeout):
    boot = ("import time; t0 = time.perf_counter(); "
            f"from bpc.bench.compile_time import child; child({case!r}, t0)")
    env = dict(os.environ, BPC_CACHE_DIR=cache)
    p = subprocess.run([sys.executable, "-c", boot], env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise BenchCaseError(f"{case}: the benchmark process failed: {p.stderr.strip().splitlines()[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


class BenchCaseError(RuntimeError):
    pass


def run(cases=DEFAULT_CASES, timeout=1800, progress=True):
    from .machine import machine_info, load_average
    try:
        from tqdm.auto import tqdm
        bar = tqdm(total=2 * len(cases), unit="process", desc="compile time", disable=None if progress else True,
                   leave=False)
    except ImportError:
        bar = None
    rows = []
    for case in cases:
        cache = tempfile.mkdtemp(prefix="bpc-compile-time-")
        try:
            cold = run_case(case, cache, timeout)
            bar and bar.update()
            warm = run_case(case, cache, timeout)
            bar and bar.update()
            rows.append({"case": case, "cold": cold, "warm": warm})
        except (BenchCaseError, subprocess.TimeoutExpired) as e:
            rows.append({"case": case, "error": str(e)})
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    bar and bar.close()
    return {"machine": machine_info(), "load_average": load_average(), "results": rows,
            "numba_threads": os.environ.get("NUMBA_NUM_THREADS", "default")}


def format_table(report):
    lines = [f"{'case':12} {'cold':>8} {'build':>7} {'1st call':>9} {'numba':>7} {'llvm':>6} "
             f"{'kernels':>8} {'warm':>7} {'warm 1st':>9}"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"{r['case']:12} failed: {r['error']}")
            continue
        c, w = r["cold"], r["warm"]
        lines.append(f"{r['case']:12} {c['total_s']:7.2f}s {c['build_s']:6.2f}s {c['first_call_s']:8.2f}s "
                     f"{c['numba_s']:6.2f}s {c['llvm_s']:5.2f}s {c['kernel_modules']:8d} {w['total_s']:6.2f}s "
                     f"{w['first_call_s']:8.2f}s")
    lines.append("cold/warm: process start to the end of the first call, imports included "
                 "(cold: empty cache; warm: the same cache, a new process); numba/llvm: seconds compiling "
                 "kernels (llvm: of which in LLVM)")
    return "\n".join(lines)


def plot(report, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind, label in ((axes[0], "mlp", "hidden layers (tanh MLP, Adam)"),
                            (axes[1], "chain", "elementwise ops in a chain")):
        pts = [(int(r["case"].split(":")[1]), r["cold"]["total_s"], r["warm"]["total_s"])
               for r in report["results"] if r["case"].startswith(kind + ":") and "error" not in r]
        if not pts:
            ax.set_visible(False)
            continue
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="cold (empty cache)")
        ax.plot([p[0] for p in pts], [p[2] for p in pts], "s-", label="warm (cached)")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds to the end of the first call")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("bpc compile time (fresh process per point)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", help="a case (mlp:L, chain:K, params:P, lstm:T); repeatable")
    ap.add_argument("--out", default="bench_results", help="folder for compile_time.json/.png")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per process")
    args = ap.parse_args(argv)
    report = run(args.case or DEFAULT_CASES, args.timeout)
    print(format_table(report))
    os.makedirs(args.out, exist_ok=True)
    from ..io import atomic_write_text
    atomic_write_text(os.path.join(args.out, "compile_time.json"), json.dumps(report, indent=1))
    if plot(report, os.path.join(args.out, "compile_time.png")):
        print(f"wrote {os.path.join(args.out, 'compile_time.json')} and compile_time.png")


if __name__ == "__main__":
    main()

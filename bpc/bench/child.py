"""The side of a benchmark that runs in a fresh process.

`bpc.bench.harness.run_child` starts `python -c` with a two-line boot that
reads the clock and calls `main(t0, argv)` here; the result is one JSON line
on stdout ("#tick" lines before it advance the parent's progress bar).
Kinds of process (`--child KIND`):

  startup   build bpc's SGD step and call it once: where the time went (the
            cold compile with an empty cache, or the warm start on a
            populated one)
  measure   the same start, then the interpreted, compiled and GEMM-only
            steps timed round-robin
  numpy, torch, jax   one reference step (`bpc.bench.references`) timed

Not a user interface: the options are what the parent passes.
"""
import argparse
import json
import time

from bpc.models import load as load_model

from . import references
from .harness import measure, print_tick
from .machine import set_threads, thread_info
from .steps import gemm_bound, sgd_step


def startup(args, t0):
    """Build the step and call it once. Returns (step function, model
    spec, X, Y, the result's "startup" part: seconds to import, build, first
    call, and since t0)."""
    imported = time.perf_counter() - t0
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
    return fn, spec, X, Y, {
        "import_s": imported, "build_s": built, "first_call_s": first,
        "since_start_s": time.perf_counter() - t0,
        "compile_seconds": {str(k): v for k, v in getattr(backend, "compile_seconds", {}).items()},
        "codegen_seconds": getattr(backend, "codegen_seconds", None)}


def measure_step(args, fn, spec, X, Y):
    """Time the interpreted step, the compiled step `fn` and (on the CPU)
    the GEMM-only bound round-robin; returns the result's measurement part."""
    plan = getattr(fn.backend, "plan", None)
    out = {"kernels": len(plan.kernels) if plan is not None else None, "notes": []}
    interp, _ = sgd_step(spec, "interpret")
    fns = {"interpreted": lambda: interp(X, Y), "compiled": lambda: fn(X, Y)}
    if args.target in ("cpu", "interpret"):
        gemm, desc = gemm_bound(fn, args.batch)
        if gemm is None:
            out["notes"].append(f"GEMM-only bound skipped: {desc}")
        else:
            fns["gemm_only"] = gemm
            out["gemm_products"] = desc
    else:
        out["notes"].append(f"GEMM-only bound (CPU BLAS) not measured for target {args.target}")
    out["samples"], out["calls_per_round"] = measure(fns, args.rounds, args.min_round_s, print_tick)
    out["threads"] = thread_info()
    return out


def reference(args):
    """Time one comparison framework's step in this (fresh) process."""
    import numpy as np
    threads = references.threads(args.child, args.threads)
    rng = np.random.default_rng(0)
    if args.layers.startswith("lstm:"):
        steps, features, hidden = (int(v) for v in args.layers[5:].split("-"))
        X = rng.normal(size=(args.batch, steps, features)).astype(np.float32)
        Y = rng.integers(0, 2, args.batch).astype(np.int64)
        step = references.LSTM_STEPS[args.child](X, Y, hidden)
    elif args.layers == "lenet":
        X = rng.normal(size=(args.batch, 1, 28, 28)).astype(np.float32)
        Y = rng.integers(0, 10, args.batch).astype(np.int64)
        step = references.LENET_STEPS[args.child](X, Y)
    else:
        layers = tuple(int(v) for v in args.layers.split("-"))
        X = rng.normal(size=(args.batch, layers[0])).astype(np.float32)
        Y = rng.integers(0, layers[-1], args.batch).astype(np.int64)
        step = references.STEPS[args.child](layers, X, Y)
    samples, counts = measure({"step": step}, args.rounds, args.min_round_s, print_tick)
    return {"samples": samples["step"], "calls_per_round": counts["step"], "threads": threads}


def parse(argv):
    ap = argparse.ArgumentParser(prog="bpc.bench.child")
    ap.add_argument("--child", required=True, choices=["startup", "measure", *references.NAMES])
    ap.add_argument("--model")
    ap.add_argument("--layers")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--min-round-s", type=float, default=0.05)
    return ap.parse_args(argv)


def main(t0, argv):
    """Run the process `argv` asks for and print its JSON result; `t0` is
    the clock reading of the process's first statement."""
    args = parse(argv)
    if args.child in ("startup", "measure"):
        fn, spec, X, Y, started = startup(args, t0)
        out = {"startup": started}
        if args.child == "measure":
            out.update(measure_step(args, fn, spec, X, Y))
    else:
        out = reference(args)
    print(json.dumps(out))

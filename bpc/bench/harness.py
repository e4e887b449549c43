"""Timing and processes: the machinery every bpc benchmark measures with.

- `measure` times functions in rounds, round-robin: one round of each in
  turn, so that load from other processes hits them alike and ratios can
  be taken round by round (`summarize` of the per-round ratios).
- `summarize` reduces per-round times to median, quartiles, min and max.
- `run_child` runs one measurement in a fresh Python process
  (`bpc.bench.child`) and reads back its JSON result. A fresh process keeps
  thread pools and BLAS copies of different frameworks apart and makes cold
  compile and warm start measurable.

Nothing here knows about models or bpc's targets.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


# ----- statistics --------------------------------------------------------------------------

def summarize(samples):
    """Median, quartiles, min and max of per-step times (seconds)."""
    a = np.asarray(samples, dtype=float)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "min": float(a.min()),
            "max": float(a.max()), "rounds": int(a.size)}


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
    rounds, round-robin over the functions. Returns ({name: [seconds per
    call in each round]}, {name: calls per round})."""
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


# ----- child processes ------------------------------------------------------------------------

class BenchError(RuntimeError):
    """A benchmark process failed (its last error line is the message)."""


# The folder that holds this bpc package: a child imports the same bpc as
# the process that starts it (installed or a source checkout), never a `bpc`
# folder that happens to be in the current directory.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The child's first statement starts its clock, before `import bpc`: the warm
# start counts bpc's, NumPy's and Numba's imports, not the interpreter's own
# start-up. `-c` puts the current directory first on sys.path; the child
# replaces it with PACKAGE_ROOT.
_BOOT = ("import sys, time; t0 = time.perf_counter(); sys.path[0] = {root!r}; "
         "from bpc.bench.child import main; main(t0, sys.argv[1:])")


def child_command(kind, args):
    """The command line of a `bpc.bench.child` process of this kind."""
    return [sys.executable, "-c", _BOOT.format(root=PACKAGE_ROOT), "--child", kind, *args]


def child_env(threads=None, cache_dir=None):
    """The environment of a child process: this one's, plus the BLAS thread
    count and bpc's cache folder when given."""
    env = dict(os.environ)
    if threads:
        env["OPENBLAS_NUM_THREADS"] = str(threads)
    if cache_dir:
        env["BPC_CACHE_DIR"] = cache_dir
    return env


def print_tick():
    """In a child: advance the parent's progress bar by one round."""
    print("#tick", flush=True)


def run_child(kind, args, subject, env=None, tick=None, timeout=3600):
    """Run a `bpc.bench.child` process (`kind`: startup, measure, numpy,
    torch, jax) about `subject` (a model, for the error message); returns
    (its JSON result, wall seconds). Lines "#tick" on its stdout call
    `tick` (the progress bar); its last stderr line is the error."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(child_command(kind, args), stdout=subprocess.PIPE, stderr=err, text=True,
                                env=env)
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
            raise BenchError(f"the {kind} process for {subject} failed (exit {proc.returncode}): "
                             + (lines[-1].strip() if lines else "no output"))
    return json.loads(result), wall

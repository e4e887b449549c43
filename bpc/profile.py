"""Where a compiled step's time goes: `Function.profile()` on the cpu target.

A profile runs one real step (so the state after it is that of one call),
then times each kernel call of the step on its own and the whole step:

* Kernels are timed in step order, each run `repeat` times back to back
  from one native call into the step's runner (the way a step calls them,
  so no Python call per kernel is counted: through ctypes each call would
  add ~0.5 us, more than many small kernels take). A round replays the
  whole step that way, each kernel reading what the kernels before it
  wrote; the time of a kernel is its best round, divided by `repeat`.
* The step is timed as a call from Python is: argument checks, workspace,
  the runner, the outputs copied out; best of the rounds of `repeat`
  calls. What it takes beyond the kernels' total is that overhead, and
  what kernels pay for following other kernels rather than themselves
  (threads waking up, data no longer in cache).
* Kernels update params and optimizer state in place, so every leaf the
  step writes is saved after the real step and restored before each round
  and at the end: profiling leaves the model as one call would.

Matrix products report their FLOPs (2*M*N*K) and GFLOP/s, and the profile
names the BLAS that runs them, as threadpoolctl sees it: the one SciPy
links, since Numba's `np.dot` calls SciPy's BLAS (or NumPy's own, for
kernels that call its CBLAS gemm directly).
"""
import importlib
import os
import time

import numpy as np
from dataclasses import dataclass, field
from typing import Optional

from .graph.tensor import format_shape
from .ops.core import resolve

ROUNDS = 5   # each time is the best of this many rounds


@dataclass
class ProfileRow:
    """One kernel call of the step."""
    index: int                  # position in the step (call order)
    name: str                   # the listing's description, e.g. "k2_matmul: matmul [matmul]"
    module: str                 # the compiled kernel module it calls (shared by identical kernels)
    variant: str                # "serial" or "parallel"
    seconds: float              # per call
    flops: Optional[int] = None     # matrix products: 2*M*N*K at the profiled batch size
    shapes: Optional[str] = None    # matrix products: "128x784 @ 784x256 -> 128x256" (ᵀ: a transposed view)

    @property
    def gflops(self):
        """GFLOP/s of a matrix product, else None."""
        if self.flops is None or self.seconds <= 0:
            return None
        return self.flops / self.seconds / 1e9

    def to_dict(self):
        return {"index": self.index, "name": self.name, "module": self.module, "variant": self.variant,
                "seconds": self.seconds, "flops": self.flops, "gflops": self.gflops, "shapes": self.shapes}


@dataclass
class Profile:
    """The kernels of one compiled step, timed one by one (`Function.profile`)."""
    function: str               # the function's name
    target: str
    batch: int
    variant: str
    repeat: int                 # calls per round
    rounds: int
    rows: list                  # ProfileRow per kernel call, in step order
    step_seconds: float         # one whole call from Python, measured the same way
    gemm: dict = field(default_factory=dict)      # the BLAS library (see `gemm_library`)
    threads: dict = field(default_factory=dict)   # Numba's threads and threading layer
    outputs: object = field(default=None, repr=False)   # what the real step returned

    @property
    def total(self):
        """Seconds of all kernel calls of one step."""
        return sum(r.seconds for r in self.rows)

    @property
    def matmuls(self):
        return [r for r in self.rows if r.flops is not None]

    def to_dict(self):
        """The profile as JSON-ready data (without the step's outputs)."""
        return {"function": self.function, "target": self.target, "batch": self.batch,
                "variant": self.variant, "repeat": self.repeat, "rounds": self.rounds,
                "total_seconds": self.total, "step_seconds": self.step_seconds,
                "rows": [r.to_dict() for r in self.rows], "gemm": dict(self.gemm), "threads": dict(self.threads)}

    def gemm_line(self):
        g = self.gemm
        if not g.get("library"):
            return "GEMM: unknown BLAS (threadpoolctl is not installed)" if g.get("missing") else "GEMM: unknown"
        what = g["library"] + (f" {g['version']}" if g.get("version") else "")
        extra = ", ".join(x for x in (g.get("architecture"), g.get("threading_layer")) if x)
        return (f"GEMM: {what}{f' ({extra})' if extra else ''}, {g.get('source', 'linked by SciPy')}, "
                f"{g.get('threads', '?')} threads")

    def threads_line(self):
        t = self.threads
        layer = t.get("layer") or "not started"
        return f"Numba: {t.get('numba', '?')} threads (threading layer: {layer})"

    def __str__(self):
        total = self.total
        lines = [f"profile of '{self.function}' on target '{self.target}', batch {self.batch}, "
                 f"{self.variant} kernels: best of {self.rounds} rounds of {self.repeat} calls each",
                 f"{'#':>3}  {'kernel':44} {'time':>10} {'share':>6} {'GFLOP/s':>8}  matrix product"]
        for r in self.rows:
            share = f"{100 * r.seconds / total:5.1f}%" if total > 0 else "     -"
            rate = f"{r.gflops:8.2f}" if r.gflops is not None else f"{'':8}"
            lines.append(f"{r.index:>3}  {_clip(r.name, 44):44} {format_seconds(r.seconds):>10} {share:>6} "
                         f"{rate}  {r.shapes or ''}".rstrip())
        flops = sum(r.flops for r in self.matmuls)
        mm = sum(r.seconds for r in self.matmuls)
        lines.append(f"kernels: {len(self.rows)} calls, {format_seconds(total)} in all"
                     + (f"; matrix products {format_seconds(mm)} ({100 * mm / total:.1f}%), "
                        f"{flops / mm / 1e9:.2f} GFLOP/s overall" if mm > 0 and total > 0 else ""))
        over = self.step_seconds - total
        lines.append(f"whole step from Python: {format_seconds(self.step_seconds)}, " + (
            f"{format_seconds(over)} more than the kernels' total (argument checks, workspace, runner, "
            f"outputs; and kernels following other kernels: threads waking, cold caches)" if over >= 0 else
            f"{format_seconds(-over)} less than the kernels' total (timing noise)"))
        lines.append(self.gemm_line())
        lines.append(self.threads_line())
        return "\n".join(lines)

    def matmul_section(self):
        """The matrix products, for `Function.report()`."""
        lines = [f"matrix products (last profile: batch {self.batch}, {self.variant} kernels):"]
        for r in self.matmuls:
            rate = f" {r.gflops:8.2f} GFLOP/s" if r.gflops is not None else ""
            lines.append(f"  {_clip(r.name, 34):34} {r.shapes or '':34} {format_seconds(r.seconds):>10}{rate}")
        if not self.matmuls:
            lines.append("  (none)")
        lines.append("  " + self.gemm_line())
        return "\n".join(lines)


def format_seconds(s):
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.2f} us"


def _clip(text, width):
    return text if len(text) <= width else text[:width - 1] + "…"


def _matmul_info(kernel, batch):
    """(FLOPs, shapes text) of a matrix-product kernel at `batch`, else (None, None)."""
    if kernel is None or kernel.form != "matmul":
        return None, None
    n = kernel.node
    a, b = n.inputs
    # Batched products: every matrix of the result is (m x k) @ (k x cols);
    # a vector operand is a matrix of one row or column.
    k = resolve(a.shape, batch)[-1]
    shape = resolve(n.shape, batch)
    m = shape[-2] if a.ndim > 1 else 1
    cols = shape[-1] if b.ndim > 1 else 1
    stack = int(np.prod(resolve(n.shape, batch))) // (m * cols) if n.ndim else 1

    def text(t):
        shape = format_shape(resolve(t.shape, batch))[1:-1].replace(", ", "x")
        return shape + ("ᵀ" if t.op is not None and t.op.name == "transpose" else "")
    out = format_shape(resolve(n.shape, batch))[1:-1].replace(", ", "x")
    return 2 * stack * m * k * cols, f"{text(a)} @ {text(b)} -> {out}"


def gemm_library(which="scipy"):
    """The BLAS that compiled matrix products call, as threadpoolctl reports
    it: library, version, architecture, threading layer, threads.
    `which`: "scipy" (the BLAS SciPy links, which Numba's `np.dot` calls)
    or "numpy" (NumPy's own, for kernels that call its CBLAS gemm).
    {"missing": True} without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"missing": True}
    try:
        package = importlib.import_module(which)
        if which == "scipy":   # loads SciPy's BLAS, as Numba's np.dot does
            importlib.import_module("scipy.linalg.cython_blas")
        home = os.path.realpath(os.path.dirname(package.__file__))
    except ImportError:
        home = None
    blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    # Wheels keep their libraries in the package folder or a "<package>.libs" beside it.
    ours = [p for p in blas if home and os.path.realpath(p.get("filepath", "")).startswith((home + os.sep,
                                                                                          home + ".libs"))]
    if ours:
        p, source = ours[0], f"linked by {'SciPy' if which == 'scipy' else 'NumPy'}"
    elif len(blas) == 1:
        p, source = blas[0], "the one BLAS loaded"
    else:
        return {"library": None, "candidates": [b.get("internal_api") for b in blas]}
    return {"library": p.get("internal_api"), "version": p.get("version"), "architecture": p.get("architecture"),
            "threading_layer": p.get("threading_layer"), "threads": p.get("num_threads"),
            "file": os.path.basename(p.get("filepath", "")), "source": source}


def _gemm_of(backend):
    """Which BLAS the step's matrix products call: SciPy's where its kernels
    call Numba's np.dot, else NumPy's (which bpc calls directly)."""
    from .backends.cpu import blas
    if any("np.dot(" in s for s in getattr(backend, "kernel_sources", ())):
        return "scipy"
    return "numpy" if blas.numpy_gemm() is not None else "scipy"


def _numba_threads():
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:   # no parallel code ran in this process yet
        layer = None
    return {"numba": numba.get_num_threads(), "layer": layer}


def _best(fn, repeat, rounds, before_round):
    """Best seconds per call of `fn` (which makes `repeat` calls) over `rounds` rounds."""
    best = float("inf")
    for _ in range(rounds):
        before_round()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / repeat


def profile(function, args, kwargs, repeat=20, rounds=ROUNDS):
    """`Function.profile`: see the module docstring."""
    from .backends import residency
    if function.target != "cpu":
        raise ValueError(f"profile() times the kernels of the 'cpu' target; this function's target is "
                         f"'{function.target}'")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"profile(): repeat must be a positive integer, got {repeat!r}")
    backend = function.backend
    arrays, batch = function._validate(function._bind(args, kwargs))
    written = {t.id: t for t in backend._written}
    written.update({t.id: t for t in backend.plan.in_place.values()})
    written.update({t.id: t for t, _ in backend.plan.copies})
    with function._lock:
        outs = function._run(arrays, batch)   # one real step: the state profile() leaves behind
        saved = {i: residency.host_value(t) for i, t in written.items()}

        def restore():
            for i, t in written.items():
                t.value = saved[i]
        try:
            ws = backend._acquire(batch)
            try:
                variant = ws[1]
                calls = range(len(backend.call_describes))
                runs = [backend.calls_runner(ws, arrays, batch, [i] * repeat) for i in calls]
                best = [float("inf")] * len(runs)
                for _ in range(rounds):   # a round replays the step, each kernel `repeat` times
                    restore()
                    for i, run in enumerate(runs):
                        t0 = time.perf_counter()
                        run()
                        best[i] = min(best[i], time.perf_counter() - t0)
            finally:
                backend._release(batch, ws)
            rows = []
            for i in calls:
                flops, shapes = _matmul_info(backend.call_kernels[i], batch)
                rows.append(ProfileRow(i, backend.call_describes[i], backend.call_modules[i], variant,
                                       best[i] / repeat, flops, shapes))

            def steps():
                for _ in range(repeat):
                    function._run(*function._validate(function._bind(args, kwargs)))
            step_seconds = _best(steps, repeat, rounds, restore)
        finally:
            restore()
    result = Profile(function.program.name, function.target, batch, variant, repeat, rounds, rows,
                     step_seconds, gemm_library(_gemm_of(backend)), _numba_threads(),
                     outputs=outs[0] if function._single else outs)
    function.last_profile = result
    return result

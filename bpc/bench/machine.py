"""The machine a benchmark ran on: CPU, cores, versions, load, threads.

Every report records these so that numbers from different runs can be told
apart. threadpoolctl (which BLAS libraries are loaded, with how many
threads) is optional: without it the report says so.
"""
import os
import platform

import numpy as np

import bpc


def machine_info():
    """CPU model, core counts and the versions of Python, bpc, Numba, NumPy
    and SciPy."""
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
    """The 1-, 5- and 15-minute load averages, or None where unknown."""
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
    from bpc.backends import threads
    threads.configure()   # bpc's layer choice and wait policy, as a compiled step would set them
    try:
        from numba.np.ufunc.parallel import _launch_threads
        _launch_threads()
    except Exception:   # a private helper; without it the layer may read "not started"
        pass
    try:
        layer = numba.threading_layer()
    except ValueError:   # no parallel region has run in this process
        layer = None
    from bpc.backends.cpu import blas
    info = {"numba_threads": numba.get_num_threads(),
            "gemm": blas.describe(),
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
    """One line from `thread_info()`: Numba's threads and layer, each BLAS
    pool's threads."""
    layer = info["numba_threading_layer"] or (
        f"not started (no parallel loop ran; would pick from {info['numba_threading_layer_priority']})")
    blas = info["blas"]
    if isinstance(blas, list):
        blas = ", ".join(f"{os.path.basename(p['filepath'] or '?')}: {p['num_threads']} threads" for p in blas)
    gemm = f"; compiled matrix products: {info['gemm']}" if info.get("gemm") else ""
    return f"numba: {info['numba_threads']} threads, layer {layer}; BLAS: {blas}{gemm}"


def set_threads(n):
    """n threads for Numba and for every BLAS. SciPy's OpenBLAS (the one
    compiled code calls) is loaded first, so that the limit reaches it too."""
    if n:
        import scipy.linalg.cython_blas  # noqa: F401
        bpc.set_num_threads(n)


class BackgroundLoad:
    """`n` processes that keep one core each busy (a tight Python loop)
    while the block runs: what a shared machine does to a benchmark. They
    start niced to 0 like any user program and are killed on exit."""

    def __init__(self, n):
        self.n = n
        self.procs = []

    def __enter__(self):
        import subprocess
        import sys
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []
        return False

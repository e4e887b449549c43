"""Thread setup for the CPU target.

Parallel loops use Numba's threading layer; matrix products use the BLAS
that SciPy links (OpenBLAS), which has threads of its own. They run one
after the other within a step, so they only fight when idle threads spin:
GNU OpenMP's spinning workers slowed a step ~50x next to OpenBLAS, and the
`workqueue` layer costs ~100 us per parallel loop. bpc therefore prefers
TBB (the `tbb` package), then OpenMP with passive waiting, unless the user
chose a layer with NUMBA_THREADING_LAYER (or a policy with OMP_WAIT_POLICY).
`set_num_threads(n)` sets both pools to n.
"""
import os

_configured = [False]


def configure():
    if _configured[0]:
        return
    _configured[0] = True
    # GNU OpenMP's idle threads spin after every parallel loop, on the cores
    # OpenBLAS needs next: a medium MLP step (784-256-256-10, batch 128, 2
    # cores) took 62 ms spinning, 1.6 ms with passive waiting (1.2-1.5 ms on
    # one thread). OpenMP reads the policy when Numba first launches its
    # threads, which has not happened yet unless the process ran parallel
    # Numba code before bpc; a policy the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    import numba
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "default"
        numba.config.THREADING_LAYER_PRIORITY = ["tbb", "omp", "workqueue"]


def get_num_threads():
    import numba
    configure()
    return numba.get_num_threads()


def set_num_threads(n):
    """Use n threads for bpc's parallel loops and for BLAS."""
    import numba
    configure()
    numba.set_num_threads(int(n))
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(int(n), user_api="blas")
    except ImportError:  # threadpoolctl ships with scikit-learn; BLAS keeps its default
        pass

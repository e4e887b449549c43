"""The CPU target: one generated Numba module per function, one native call
per step.

Work per call decides the variant: below `PARALLEL_MIN_WORK` elements of
loop work the serial build runs (waking threads costs more than the work
at those sizes: ~1.5 us per parallel loop nest against ~0.2 us serial);
above it, the `parallel=True` build. Each variant compiles on first use and
is cached on disk (see `cache.py`), so a second process compiles nothing.
Workspaces, snapshots, readback and residency are shared with the other
compiled targets (`base.py`).
"""
import time

import numpy as np

from ...ops.core import resolve
from .. import threads
from .. import residency
from ..base import CompiledBackend
from ..cache import load_module, record_compiled
from .codegen import Generator

PARALLEL_MIN_WORK = 1 << 18


class CpuBackend(CompiledBackend):
    target = "cpu"

    def __init__(self, program, parallel=None):
        """parallel: None (choose by work per call), True or False (always)."""
        threads.configure()
        super().__init__(program)
        gen = Generator(program, self.plan)
        self.source = gen.source()
        self.legend = gen.names.legend()
        t0 = time.perf_counter()
        self.module, self.path, self.key = load_module(self.source)
        self.codegen_seconds = time.perf_counter() - t0
        self._entries = {"serial": self.module.step_serial, "parallel": self.module.step_parallel}
        self._leaves = gen.leaves
        self._leaf_values = [t._value for t in gen.leaves]   # assignments copy into these arrays
        self._parallel = parallel

    def make_workspace(self, batch):
        bufs = [np.empty(resolve(shape, batch), dtype=dt) for shape, dt in self.plan.buffer_specs]
        work = sum(int(np.prod(resolve(k.shape, batch))) for k in self.plan.kernels if k.form == "loop")
        parallel = self._parallel if self._parallel is not None else (
            work >= PARALLEL_MIN_WORK and threads.get_num_threads() > 1)
        return bufs, "parallel" if parallel else "serial"

    def run(self, workspace, arrays, batch):
        bufs, variant = workspace
        first = variant not in self.compile_seconds
        if residency.any_device_copies():   # a device step may have written a leaf last
            residency.host_arrays(self._leaves)
        self._entries[variant](*arrays, *self._leaf_values, *bufs)
        if residency.any_device_copies():
            residency.host_written(self._written)
        if first and not self.compiled_from_cache(variant):
            record_compiled(self.path)
        return variant

    def compiled_from_cache(self, variant):
        return sum(self._entries[variant].stats.cache_hits.values()) > 0

    def buffer_value(self, workspace, node, batch):
        return workspace[0][self.plan.buffers[node.id]]

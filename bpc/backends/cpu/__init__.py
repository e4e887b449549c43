"""The CPU target: one generated Numba module per function, one native call
per step.

Work per call decides the variant: below `PARALLEL_MIN_WORK` elements of
loop work the serial build runs (waking threads costs more than the work
at those sizes: ~1.5 us per parallel loop nest against ~0.2 us serial);
above it, the `parallel=True` build. Each variant compiles on first use and
is cached on disk (see `cache.py`), so a second process compiles nothing.
"""
import logging
import time

import numpy as np

from ...ops.core import resolve
from ...passes.fuse import plan as make_plan
from . import threads
from ..cache import load_module, record_compiled
from ..lowering import output_value
from .codegen import Generator

log = logging.getLogger("bpc")

PARALLEL_MIN_WORK = 1 << 18


class CpuBackend:
    def __init__(self, program, parallel=None):
        """parallel: None (choose by work per call), True or False (always)."""
        threads.configure()
        self.program = program
        self.plan = make_plan(program)
        gen = Generator(program, self.plan)
        self.source = gen.source()
        t0 = time.perf_counter()
        self.module, self.path, self.key = load_module(self.source)
        self.codegen_seconds = time.perf_counter() - t0
        self._entries = {False: self.module.step_serial, True: self.module.step_parallel}
        self._leaves = [n._value for n in gen.leaves]
        self._parallel = parallel
        self._workspaces = {}
        self.compile_seconds = {}
        self._buffer_of = {nid: b for nid, b in self.plan.buffers.items()}
        self._input_pos = {t.id: i for i, t in enumerate(program.inputs)}
        # Outputs that are leaves keep their pre-step value (updates come after outputs).
        self._snap = [o for o in program.outputs if o.op is None and o.kind != "input"
                      and o.id not in self.plan.inline]

    def kernel_of(self):
        return self.plan.kernel_of()

    def _workspace(self, batch):
        ws = self._workspaces.get(batch)
        if ws is None:
            if len(self._workspaces) >= 4:  # keep a few batch sizes (e.g. full and last)
                self._workspaces.pop(next(iter(self._workspaces)))
            bufs = [np.empty(resolve(shape, batch), dtype=dt) for shape, dt in self.plan.buffer_specs]
            work = sum(int(np.prod(resolve(k.shape, batch))) for k in self.plan.kernels if k.kind == "loop")
            parallel = self._parallel if self._parallel is not None else (
                work >= PARALLEL_MIN_WORK and threads.get_num_threads() > 1)
            ws = self._workspaces[batch] = (bufs, parallel)
        return ws

    def __call__(self, arrays, batch):
        bufs, parallel = self._workspace(batch)
        snapshot = {o.id: np.array(o._value) for o in self._snap}
        entry = self._entries[parallel]
        if parallel not in self.compile_seconds:
            t0 = time.perf_counter()
            entry(*arrays, *self._leaves, *bufs)
            self.compile_seconds[parallel] = dt = time.perf_counter() - t0
            hits = sum(entry.stats.cache_hits.values())
            if not hits:
                record_compiled(self.path)
            log.info("bpc: %s %s variant of '%s' (%s) in %.2f s", "loaded cached" if hits else "compiled",
                     "parallel" if parallel else "serial", self.program.name, self.key[:12], dt)
        else:
            entry(*arrays, *self._leaves, *bufs)
        return [np.array(self._value_of(o, arrays, bufs, snapshot, batch)) for o in self.program.outputs]

    def _value_of(self, node, arrays, bufs, snapshot, batch):
        def buffer_value(n):
            return bufs[self._buffer_of[n.id]] if n.id in self._buffer_of else None
        return output_value(node, self.plan, buffer_value, arrays, self._input_pos, snapshot, batch)

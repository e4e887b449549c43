"""What every compiled target shares, so that a fix lands once.

A compiled backend turns a `Program` into a fusion plan (`passes/fuse.py`)
and generated code; this base class owns everything around running it:

* workspaces: the buffers of one call, made per batch size and handed out
  from a pool, so concurrent calls from several threads never share one
  (a function with updates runs one call at a time: `bpc.function` holds
  its lock around the whole call, checks included);
* snapshots: outputs that are (views of) parameters updated by the step
  report the pre-step value, as on the interpreter (outputs are computed
  before the updates are written);
* readback: an output is its buffer, an input, a leaf, an inlined scalar,
  or a view of one of these (any depth);
* residency: a param has one current value, whichever target wrote it last
  (`residency.py`);
* compile logging: the first call of each variant says whether it compiled
  or loaded cached machine code, and how long it took.

A subclass says how to make a workspace, run the step in it, and read a
buffer back (`make_workspace`, `run`, `buffer_value`).
"""
import logging
import threading
import time

import numpy as np

from ..ops.core import resolve
from ..passes.fuse import plan as make_plan
from . import residency
from .lowering import view_chain

log = logging.getLogger("bpc")

# Batch sizes whose workspaces are kept (e.g. the full and the last batch),
# and idle workspaces kept per batch size (one per concurrent caller).
KEEP_BATCH_SIZES = 4
KEEP_PER_BATCH = 4


class CompiledBackend:
    target = "compiled"

    def __init__(self, program):
        self.program = program
        self.plan = make_plan(program, **self.plan_options())
        self.compile_seconds = {}
        self._input_pos = {t.id: i for i, t in enumerate(program.inputs)}
        self._written = [p for p, _ in program.updates]
        updated = {p.id for p in self._written}
        bases = {b.id: b for b in (view_chain(o)[-1] for o in program.outputs)}
        self._snap = [b for b in bases.values() if b.op is None and b.id in updated]
        self._pool = {}
        self._pool_lock = threading.Lock()

    def plan_options(self):
        """Keyword options of `passes.fuse.plan` this target supports."""
        return {}

    def kernel_of(self):
        return self.plan.kernel_of()

    # ----- what a subclass provides ------------------------------------------------
    def make_workspace(self, batch):
        raise NotImplementedError

    def run(self, workspace, arrays, batch):
        """Run the step; returns the variant it ran (for compile logging)."""
        raise NotImplementedError

    def buffer_value(self, workspace, node, batch):
        """Node's value (a host array) from its workspace buffer."""
        raise NotImplementedError

    def compiled_from_cache(self, variant):
        """Whether the first run of `variant` loaded cached machine code."""
        return False

    # ----- a call ------------------------------------------------------------------
    def __call__(self, arrays, batch):
        ws = self._acquire(batch)
        try:
            snapshot = {n.id: residency.host_value(n) for n in self._snap}
            t0 = time.perf_counter()
            variant = self.run(ws, arrays, batch)
            if variant not in self.compile_seconds:
                self._log_first_run(variant, time.perf_counter() - t0)
            return [np.array(self._output(o, ws, arrays, snapshot, batch)) for o in self.program.outputs]
        finally:
            self._release(batch, ws)

    def _log_first_run(self, variant, seconds):
        self.compile_seconds[variant] = seconds
        cached = self.compiled_from_cache(variant)
        log.info("bpc: %s %s %s of '%s' (%s) in %.2f s", "loaded cached" if cached else "compiled",
                 self.target, variant, self.program.name, self.key[:12], seconds)

    def _output(self, node, ws, arrays, snapshot, batch):
        if node.id in self.plan.inline:
            return np.array(self.plan.inline[node.id], dtype=node.dtype)
        if node.id in self.plan.buffers:
            return self.buffer_value(ws, node, batch)
        if node.id in self._input_pos:
            return arrays[self._input_pos[node.id]]
        if node.op is None:
            return snapshot[node.id] if node.id in snapshot else residency.host_value(node)
        # A view (transpose, reshape): the same view of what it aliases.
        base = self._output(node.inputs[0], ws, arrays, snapshot, batch)
        return node.op.numpy(node.attrs, resolve(node.shape, batch), base)

    # ----- workspaces ------------------------------------------------------------
    def _acquire(self, batch):
        with self._pool_lock:
            free = self._pool.get(batch)
            if free:
                return free.pop()
        return self.make_workspace(batch)

    def _release(self, batch, ws):
        with self._pool_lock:
            if batch not in self._pool and len(self._pool) >= KEEP_BATCH_SIZES:
                self._pool.pop(next(iter(self._pool)))
            free = self._pool.setdefault(batch, [])
            if len(free) < KEEP_PER_BATCH:
                free.append(ws)

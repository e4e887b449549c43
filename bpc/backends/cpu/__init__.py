"""The CPU target: one compiled function per kernel structure, shared by
every step and process that runs it, called in order by one runner, so a
step is one native call.

Kernels compile on first use (per variant), each once per process and
once per cache: a kernel that another function or an earlier process
compiled is reused, not compiled (`Function.report()` and
`BPC_LOG_COMPILES=1` say which, with the seconds Numba spent). When many
kernels are new, helper processes compile some of them (`workers.py`).

Each kernel call runs serially unless its own loop has at least
`PARALLEL_MIN_WORK` elements: waking sleeping threads costs more than
most kernels' work. Measured on 2 cores with passive waiting (which keeps
idle threads off the cores BLAS needs, `threads.py`): every loop parallel
made a tiny MLP step 1.2-1.4 ms instead of 0.035-0.045 (~40 us per wake),
and a 512x1024 elementwise kernel 0.18 ms instead of 0.09; the medium and
large steps were fastest with serial loops too. Matrix products bring
BLAS's own threads. `parallel=True`/`False` runs every kernel's parallel/
serial variant. Workspaces, snapshots, readback and residency are shared
with the other compiled targets (`base.py`).
"""
import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from ...errors import CompileError
from ...ops.core import resolve
from .. import threads
from .. import residency
from ..base import CompiledBackend
from ..cache import has_compiled, load_module, record_compiled, verify_compiled
from . import blas, workers
from .codegen import Generator, KERNEL_PREFIX, FASTMATH_FLAGS
from .runner import RUNNER_PREFIX, runner_source

log = logging.getLogger("bpc")

PARALLEL_MIN_WORK = 1 << 21   # elements of one kernel's loop


@dataclass
class KernelCompile:
    """How one kernel variant came to be callable in this process."""
    module: str
    variant: str
    how: str               # "compiled", "helper" (compiled by a helper process, then loaded),
    #                        "cache hit" (Numba's disk cache) or "shared" (already in this process)
    seconds: float = 0.0   # wall time to compile or load
    llvm_seconds: float = 0.0   # of which in LLVM (optimization, machine code)

    def describe(self):
        what = {"compiled": "compiled", "helper": "loaded (compiled by a helper process)",
                "cache hit": "loaded cached", "shared": "reused"}[self.how]
        line = f"{what} kernel {self.module} ({self.variant})"
        if self.how == "compiled":
            return line + (f" in {self.seconds:.3f} s (Numba typing and lowering "
                           f"{self.seconds - self.llvm_seconds:.3f} s, LLVM {self.llvm_seconds:.3f} s)")
        return line + (f" in {self.seconds:.3f} s" if self.how != "shared" else "")


_kernels = {}    # (module name, variant) -> (numba CFunc, KernelCompile): process-wide
_kernels_lock = threading.Lock()


def kernel(module, path, variant):
    """The compiled C callback of one kernel module's variant and how it was
    obtained this time."""
    from numba import cfunc, types
    from numba.core import event
    key = (module.__name__, variant)
    with _kernels_lock:
        if key in _kernels:
            f, _ = _kernels[key]
            return f, KernelCompile(module.__name__, variant, "shared")
        if variant == "parallel":
            # Machine code loaded from the cache calls the threading layer's
            # symbols; compiling registers them, loading does not.
            from numba.np.ufunc.parallel import _launch_threads
            _launch_threads()
        llvm = []
        t0 = time.perf_counter()
        with event.install_timer("numba:llvm_lock", llvm.append):
            f = cfunc(types.void(types.int64, types.CPointer(types.voidptr), types.CPointer(types.int64)), cache=True,
                      fastmath=set(FASTMATH_FLAGS), error_model="numpy", nogil=True)(getattr(module, variant))
        info = KernelCompile(module.__name__, variant, "cache hit" if f.cache_hits else "compiled",
                             time.perf_counter() - t0, sum(llvm))
        if not f.cache_hits:
            record_compiled(path)
        _kernels[key] = (f, info)
        return f, info


class CpuBackend(CompiledBackend):
    target = "cpu"

    def __init__(self, program, parallel=None):
        """parallel: None (choose by work per call), True or False (always)."""
        threads.configure()
        super().__init__(program)
        t0 = time.perf_counter()
        gen = Generator(program, self.plan)
        self.kernel_modules = [load_module(src, prefix=KERNEL_PREFIX)[:2] for src in gen.kernel_sources]
        self.kernel_sources = gen.kernel_sources
        names = [m.__name__ for m, _ in self.kernel_modules]
        self.legend = gen.names.legend()
        self.source = "\n".join(gen.listing(names)) + "\n\n" + "\n".join(
            f"# ----- {name}.py\n{src}" for name, src in zip(names, gen.kernel_sources))
        self.key = "".join(name[len(KERNEL_PREFIX) + 1:] for name in names)[:64] or "no-kernels"
        self._runner_module, self._runner_path, _ = load_module(runner_source(len(program.inputs)),
                                                                prefix=RUNNER_PREFIX)
        self.codegen_seconds = time.perf_counter() - t0
        # The call table: each kernel's entries, one after another.
        self._starts = np.zeros(len(gen.calls), dtype=np.int64)
        self._size_starts = np.zeros(len(gen.calls), dtype=np.int64)
        entries, sizes, offsets = [], [], []
        for i, (_, slots, kernel_sizes, _, _, offs) in enumerate(gen.calls):
            self._starts[i], self._size_starts[i] = len(entries), len(sizes)
            entries.extend(slots)
            sizes.extend(kernel_sizes)
            offsets.extend(offs or [(0, 0)] * len(slots))
        self._entries = np.array(entries, dtype=np.int64)
        # Byte offsets a + b * N added to entries' addresses: a scan step's
        # slice of a time-major stack (`scan.py`).
        self._offsets = np.array(offsets, dtype=np.int64).reshape(-1, 2)
        self._sizes = np.array(sizes, dtype=np.int64)
        n_in = len(program.inputs)
        in_slots = [[j for j, s in enumerate(entries) if s == i] for i in range(n_in)]
        self._slots = np.array([j for js in in_slots for j in js], dtype=np.int64)
        self._slot_starts = np.cumsum([0] + [len(js) for js in in_slots]).astype(np.int64)
        self._calls = [call[0] for call in gen.calls]
        # Per call, for people reading a profile: the listing's description
        # ("k2_matmul: matmul [matmul]", "update copy") and the plan's kernel
        # (None for the update copies that follow the planned kernels).
        self.call_describes = [call[3] for call in gen.calls]
        self.call_kernels = [call[4] for call in gen.calls]
        self.call_modules = [names[idx] for idx in self._calls]
        self._fns = {}          # each call's variant (a tuple) -> int64 array of kernel addresses, in call order
        self.compiles = {}      # "serial"/"parallel"/"mixed" -> [KernelCompile], unique kernels in order of first call
        self._scratch_specs = gen.scratch_specs
        self._leaves = gen.leaves
        self._leaf_values = [t._value for t in gen.leaves]   # assignments copy into these arrays
        for t, v in zip(self._leaves, self._leaf_values):
            # Kernels read leaves by address, as C-ordered arrays of the planned shape and dtype.
            if not (v.flags.c_contiguous and v.dtype == t.dtype and v.shape == t.shape):
                raise CompileError(f"{t.kind} '{t.name}' holds a {v.dtype} array of shape {v.shape} "
                                   f"(C-contiguous: {v.flags.c_contiguous}); bpc expected a C-contiguous "
                                   f"{t.dtype} array of shape {t.shape}")
        self._parallel = parallel

    def plan_options(self):
        # Products through NumPy's CBLAS gemm can accumulate: SGD updates fold into them.
        return {"gemm_updates": blas.numpy_gemm() is not None}

    def make_workspace(self, batch):
        bufs = [np.empty(resolve(shape, batch), dtype=dt) for shape, dt in self.plan.buffer_specs + self._scratch_specs]
        # Kernels without a parallel loop (products, whose BLAS has threads of
        # its own) have one variant: serial.
        choice = tuple("parallel" if self._parallel_call(k, batch) and "\ndef parallel_body(" in self.kernel_sources[m]
                       else "serial" for k, m in zip(self.call_kernels, self._calls))
        label = "serial" if "parallel" not in choice else "parallel" if self._parallel else "mixed"
        # Addresses of every storage; inputs' are written by the runner on each call.
        storage = [0] * len(self.program.inputs) + [a.ctypes.data for a in self._leaf_values + bufs]
        table = np.array([storage[s] for s in self._entries], dtype=np.int64).reshape(-1)
        table += self._offsets[:, 0] + self._offsets[:, 1] * batch
        return [bufs, label, table, True, choice]

    def _parallel_call(self, k, batch):
        """Whether kernel k (None: an update copy) runs its parallel variant."""
        if self._parallel is not None:
            return self._parallel
        if k is None or k.form not in ("loop", "random") or threads.get_num_threads() == 1:
            return False
        shape = k.shape if k.form == "loop" else k.node.shape
        return math.prod(resolve(shape, batch)) >= PARALLEL_MIN_WORK

    def _compile(self, variant, needed):
        """{module index: (callback, KernelCompile)} of the kernel modules
        `needed` in `variant`; new kernels are shared out with helper
        processes where that pays."""
        new = [i for i in needed if (self.kernel_modules[i][0].__name__, variant) not in _kernels
               and not has_compiled(self.kernel_modules[i][1], variant)]
        count = workers.helper_count(len(new))
        if not count:
            return {i: kernel(*self.kernel_modules[i], variant) for i in needed}
        helpers = workers.Helpers(count, variant, [(i, self.kernel_sources[i]) for i in new], KERNEL_PREFIX)
        results = {}
        try:
            for i in new:
                if helpers.claim(i):
                    results[i] = kernel(*self.kernel_modules[i], variant)
        finally:
            by_helpers = helpers.finish([i for i in new if i not in results])
        for i in needed:
            if i not in results:
                module, path = self.kernel_modules[i]
                if i in by_helpers:
                    verify_compiled(path)
                f, info = kernel(module, path, variant)   # compiles itself what a failed helper left
                if i in by_helpers and info.how == "cache hit":
                    info.how = "helper"
                results[i] = (f, info)
        return results

    def _kernel_addresses(self, workspace):
        """The kernel addresses of a workspace's calls, in call order (each
        call's variant as the workspace chose), compiled or loaded on first use."""
        label, choice = workspace[1], workspace[4]
        if choice not in self._fns:
            compiled = {}
            infos = self.compiles.setdefault(label, [])
            seen = {(info.module, info.variant) for info in infos}
            for variant in ("serial", "parallel"):
                needed = sorted({m for m, v in zip(self._calls, choice) if v == variant})
                if needed:
                    compiled[variant] = self._compile(variant, needed)
                    for i in needed:
                        info = compiled[variant][i][1]
                        if (info.module, variant) not in seen:
                            infos.append(info)
                            if info.how != "shared":
                                log.info("bpc: %s", info.describe())
            self._fns[choice] = np.array([compiled[v][m][0].address for m, v in zip(self._calls, choice)],
                                         dtype=np.int64)
        return self._fns[choice]

    def run(self, workspace, arrays, batch):
        bufs, variant, table = workspace[:3]
        fns = self._fns.get(workspace[4])
        if fns is None:
            fns = self._kernel_addresses(workspace)
        if residency.any_device_copies():   # a device step may have written a leaf last
            residency.host_arrays(self._leaves)
        runner = self._runner_module.run
        if workspace[3]:   # this workspace's first call: the runner may compile
            compiled = len(runner.signatures)
            runner(batch, fns, self._starts, table, self._sizes, self._size_starts, self._slots,
                   self._slot_starts, *arrays)
            if len(runner.signatures) > compiled and sum(runner.stats.cache_misses.values()):
                record_compiled(self._runner_path)   # a new specialization was compiled and cached
            workspace[3] = False
        else:
            runner(batch, fns, self._starts, table, self._sizes, self._size_starts, self._slots,
                   self._slot_starts, *arrays)
        if residency.any_device_copies():
            residency.host_written(self._written)
        return variant

    def calls_runner(self, workspace, arrays, batch, calls):
        """A callable that runs the kernel calls `calls` (indices into this
        step's calls, in any order, repeats allowed) in `workspace` with the
        inputs `arrays`: one native call into the runner, which calls the
        kernels as a step does. For timing kernels on their own
        (`bpc.profile`); the step must have run in this process before, so
        the kernels and the runner are compiled."""
        idx = np.asarray(calls, dtype=np.int64)
        table = workspace[2]
        fns = np.ascontiguousarray(self._kernel_addresses(workspace)[idx])
        starts = np.ascontiguousarray(self._starts[idx])
        size_starts = np.ascontiguousarray(self._size_starts[idx])
        if residency.any_device_copies():
            residency.host_arrays(self._leaves)
        runner = self._runner_module.run
        args = (batch, fns, starts, table, self._sizes, size_starts, self._slots, self._slot_starts, *arrays)
        return lambda: runner(*args)

    def compiled_from_cache(self, variant):
        return all(info.how in ("cache hit", "shared") for info in self.compiles.get(variant, ()))

    def buffer_value(self, workspace, node, batch):
        return workspace[0][self.plan.buffers[node.id]]

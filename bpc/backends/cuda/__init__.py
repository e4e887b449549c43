"""The CUDA target: Numba CUDA kernels generated from the fusion plan.

A call copies the batch to the device, launches the kernels of the step in
order (see `codegen.py`; launch sizes from the call's shapes, `launch.py`),
and copies back only the requested outputs. Parameters, optimizer state and
constants stay on the device between calls (`residency.py`); reading or
assigning `param.value` on the host syncs them.

Without a GPU, set NUMBA_ENABLE_CUDASIM=1 before numba is first imported to
run the same kernels on Numba's CUDA simulator (slow: for tests), and use
`ptx.compile_program` to type-check the kernels for a real GPU.
"""
import logging
import os
import sys
import time
from contextlib import contextmanager

import numpy as np

from ...errors import CompileError
from ...ops.core import resolve
from ...passes.fuse import plan as make_plan
from . import residency
from ..cache import load_module, record_compiled
from ..lowering import output_value
from .codegen import Generator
from ..lowering import view_chain
from .launch import Limits, default_limits, configure

log = logging.getLogger("bpc")


def simulator_enabled():
    import numba
    return bool(numba.config.ENABLE_CUDASIM)


def check_available():
    """Raise a CompileError saying what to do when neither a GPU nor the
    simulator can run CUDA kernels."""
    if simulator_enabled():
        return
    from numba import cuda
    if cuda.is_available():
        return
    late = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    raise CompileError(
        "target='cuda' needs an NVIDIA GPU, and numba.cuda finds none (no CUDA driver or device). "
        "Either install a CUDA GPU driver (and `pip install numba-cuda[cu13]`), or run on Numba's "
        "CUDA simulator (slow; for testing) by setting NUMBA_ENABLE_CUDASIM=1 in the environment "
        "before importing bpc or numba"
        + (" (it is set now, but numba was imported before it was)" if late else "") + ".")


def generate(program, tile):
    """(plan, generator, source) of a program for a matmul tile edge; needs
    no device."""
    plan = make_plan(program)
    simulator = simulator_enabled()
    gen = Generator(program, plan, tile, simulator)
    source = gen.source()
    import numba_cuda
    mode = "simulator" if simulator else "gpu"
    source = f"# numba-cuda {numba_cuda.__version__}, built for the {mode}\n" + source
    return plan, gen, source


class CudaBackend:
    def __init__(self, program, **limits):
        """limits: override fields of `launch.Limits` (block, tile,
        max_blocks, warp, lane_work, tiled_min_work)."""
        check_available()
        self.program = program
        self.simulator = simulator_enabled()
        self.limits = default_limits(self.simulator, **limits)
        self.plan, gen, self.source = generate(program, self.limits.tile)
        self.specs = gen.specs
        t0 = time.perf_counter()
        self.module, self.path, self.key = load_module(self.source, "cuda", "bpc_cuda")
        self.codegen_seconds = time.perf_counter() - t0
        self.kernels = [getattr(self.module, s.name) for s in self.specs]
        self._leaves = {gen.storage(n): n for n in gen.leaves}
        self._inputs = {f"in_{gen.names[t]}": i for i, t in enumerate(program.inputs)}
        self._written = [p for p, _ in program.updates]
        self._workspaces = {}
        self.compile_seconds = None
        self._buffer_of = dict(self.plan.buffers)
        self._input_pos = {t.id: i for i, t in enumerate(program.inputs)}
        # Outputs that are leaves (or views of leaves) give their pre-step value.
        bases = {b.id: b for b in (view_chain(o)[-1] for o in program.outputs)}
        self._snap = [b for b in bases.values() if b.op is None and b.kind != "input"
                      and b.id not in self.plan.inline]

    def kernel_of(self):
        return self.plan.kernel_of()

    # ----- per batch size: device buffers and bound launches --------------------------
    def _workspace(self, batch):
        ws = self._workspaces.get(batch)
        if ws is not None:
            return ws
        from numba import cuda
        if len(self._workspaces) >= 4:   # keep a few batch sizes (e.g. full and last)
            self._workspaces.pop(next(iter(self._workspaces)))
        bufs = [cuda.device_array(int(np.prod(resolve(shape, batch), dtype=np.int64)), dtype=dt)
                for shape, dt in self.plan.buffer_specs]
        used = {name for spec in self.specs for name in spec.args}
        inputs = {pos: cuda.device_array(int(np.prod(resolve(t.shape, batch), dtype=np.int64)), dtype=t.dtype)
                  for name, pos in self._inputs.items() if name in used
                  for t in [self.program.inputs[pos]]}   # only inputs some kernel reads travel
        launches = []
        for spec, kernel in zip(self.specs, self.kernels):
            grid, block, shared, scalars = configure(spec, batch, self.limits)
            scalars = {name: np.int64(v) for name, v in scalars.items()}
            scalars["N"] = np.int64(batch)
            args = []
            for name in spec.args:
                if name in scalars:
                    args.append(scalars[name])
                elif name in self._inputs:
                    args.append(inputs[self._inputs[name]])
                elif name in self._leaves:
                    args.append(residency.device_array(self._leaves[name]))
                else:
                    args.append(bufs[int(name[1:])])
            launches.append((kernel, (grid, block, 0, shared), tuple(args)))
        ws = self._workspaces[batch] = (bufs, inputs, launches)
        return ws

    def describe_launches(self, batch):
        """(kernel name, grid, block) of every launch for a batch size."""
        out = []
        for spec in self.specs:
            grid, block, _, _ = configure(spec, batch, self.limits)
            out.append((spec.name, grid, block))
        return out

    # ----- a call ------------------------------------------------------------------------
    def __call__(self, arrays, batch):
        bufs, inputs, launches = self._workspace(batch)
        for pos, dev in inputs.items():
            dev.copy_to_device(arrays[pos].reshape(-1))
        snapshot = {o.id: residency.host_value(o) for o in self._snap}
        first = self.compile_seconds is None
        t0 = time.perf_counter()
        with self._simulating():
            for kernel, config, args in launches:
                kernel[config](*args)
        residency.device_written(self._written)
        if first:
            self.compile_seconds = time.perf_counter() - t0
            if not self.simulator:
                record_compiled(self.path)
            log.info("bpc: ran (compiling or loading) %d CUDA kernels of '%s' (%s) in %.2f s",
                     len(launches), self.program.name, self.key[:12], self.compile_seconds)
        return [np.array(self._value_of(o, arrays, bufs, snapshot, batch)) for o in self.program.outputs]

    @contextmanager
    def _simulating(self):
        """The simulator runs each block's threads as Python threads and
        polls them; a short GIL switch interval lets them make progress
        (syncthreads-heavy kernels ran ~5x faster). GPU runs are untouched."""
        if not self.simulator:
            yield
            return
        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-4)
        try:
            yield
        finally:
            sys.setswitchinterval(old)

    def _value_of(self, node, arrays, bufs, snapshot, batch):
        def buffer_value(n):
            return bufs[self._buffer_of[n.id]].copy_to_host().reshape(resolve(n.shape, batch)) if n.id in self._buffer_of else None
        return output_value(node, self.plan, buffer_value, arrays, self._input_pos, snapshot, batch)


__all__ = ["CudaBackend", "Limits", "check_available", "generate", "simulator_enabled"]

"""The CUDA target: Numba CUDA kernels generated from the fusion plan.

A call copies the batch to the device, launches the kernels of the step in
order (see `codegen.py`; launch sizes from the call's shapes, `launch.py`),
and copies back only the requested outputs. Parameters, optimizer state and
constants stay on the device between calls (`backends/residency.py`); reading or
assigning `param.value` on the host syncs them.

Without a GPU, set NUMBA_ENABLE_CUDASIM=1 before numba is first imported to
run the same kernels on Numba's CUDA simulator (slow: for tests), and use
`ptx.compile_program` to type-check the kernels for a real GPU.
"""
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np

from ...errors import CompileError
from ...ops.core import resolve
from .. import residency
from ..base import CompiledBackend
from ..cache import load_module, record_compiled
from .codegen import Generator
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


def generate(program, plan, tile):
    """(generator, listing) of a program's plan for a matmul tile edge: the
    generator holds the kernel modules' sources (`kernel_sources`) and the
    launches (`specs`); needs no device."""
    gen = Generator(program, plan, tile, simulator_enabled())
    return gen, gen.source()


def load_kernels(gen):
    """[(module, path)] of each of the generator's kernel modules."""
    return [load_module(src, "cuda", KERNEL_PREFIX)[:2] for src in gen.kernel_sources]


KERNEL_PREFIX = "bpc_cuda_kernel"


class CudaBackend(CompiledBackend):
    target = "cuda"

    def __init__(self, program, **limits):
        """limits: override fields of `launch.Limits` (block, tile,
        max_blocks, warp, lane_work, tiled_min_work)."""
        check_available()
        self.simulator = simulator_enabled()
        self.limits = default_limits(self.simulator, **limits)
        super().__init__(program)
        t0 = time.perf_counter()
        gen, listing = generate(program, self.plan, self.limits.tile)
        self.legend = gen.names.legend()
        self.specs = gen.specs
        self.kernel_modules = load_kernels(gen)
        self.kernel_sources = gen.kernel_sources
        names = [m.__name__ for m, _ in self.kernel_modules]
        self.source = listing + "\n" + "\n".join(f"# ----- module {i}: {name}.py\n{src}" for i, (name, src)
                                                 in enumerate(zip(names, gen.kernel_sources)))
        self.key = "".join(name[len(KERNEL_PREFIX) + 1:] for name in names)[:64] or "no-kernels"
        self.codegen_seconds = time.perf_counter() - t0
        self.kernels = [self.kernel_modules[s.module][0].kernel for s in self.specs]
        self._leaves = gen.leaves
        self._leaf_args = {gen.storage(n): n for n in gen.leaves}
        self._inputs = {gen.names[t]: i for i, t in enumerate(program.inputs)}
        self._extra_buffers = gen.extra_buffers
        self._loops = {loop.first: loop for loop in gen.loops}

    # ----- per batch size: device buffers and bound launches --------------------------
    def make_workspace(self, batch):
        from numba import cuda
        bufs = [cuda.device_array(_flat_size(shape, batch), dtype=dt)
                for shape, dt in self.plan.buffer_specs + self._extra_buffers]
        used = {name for spec in self.specs for name in spec.args}
        used |= {outer for loop in self._loops.values() for outer, _, _ in loop.ports.values()}
        inputs = {pos: cuda.device_array(_flat_size(self.program.inputs[pos].shape, batch),
                                         dtype=self.program.inputs[pos].dtype)
                  for name, pos in self._inputs.items() if name in used}   # only inputs some kernel reads travel

        def array(name):
            if name in self._inputs:
                return inputs[self._inputs[name]]
            if name in self._leaf_args:
                return residency.device_array(self._leaf_args[name], cuda.to_device)
            return bufs[int(name[1:])]

        def launch(spec, kernel, views):
            grid, block, shared, scalars = configure(spec, batch, self.limits)
            scalars = {name: np.int64(v) for name, v in scalars.items()}
            scalars["N"] = np.int64(batch)
            args = tuple(scalars[name] if name in scalars else views[name] if name in views else array(name)
                         for name in spec.args)
            return kernel, (grid, block, 0, shared), args

        launches, i = [], 0
        while i < len(self.specs):
            loop = self._loops.get(i)
            if loop is None:
                launches.append(launch(self.specs[i], self.kernels[i], {}))
                i += 1
                continue
            # A scan: its step's launches once per time step, each bound to
            # that step's slices of the stacks (device views, no copies).
            for s in range(loop.steps):
                t = loop.steps - 1 - s if loop.reverse else s
                views = {}
                for port, (outer, shift, node) in loop.ports.items():
                    arr = array(outer)
                    if shift is not None:
                        step = _flat_size(node.shape[1:], batch)
                        arr = arr[(t + shift) * step:(t + shift + 1) * step]
                    views[port] = arr
                for j in range(loop.first, loop.first + loop.count):
                    launches.append(launch(self.specs[j], self.kernels[j], views))
            i += loop.count
        return bufs, inputs, launches

    def describe_launches(self, batch):
        """(kernel name, grid, block) of every launch for a batch size."""
        out = []
        for spec in self.specs:
            grid, block, _, _ = configure(spec, batch, self.limits)
            out.append((spec.name, grid, block))
        return out

    # ----- a call ------------------------------------------------------------------------
    def run(self, workspace, arrays, batch):
        from numba import cuda
        bufs, inputs, launches = workspace
        for pos, dev in inputs.items():
            if arrays[pos].size:
                dev.copy_to_device(arrays[pos].reshape(-1))
        for t in self._leaves:   # a host step or assignment may have written them last
            residency.device_array(t, cuda.to_device)
        with self._simulating():
            for kernel, config, args in launches:
                kernel[config](*args)
        residency.device_written(self._written)
        if "kernels" not in self.compile_seconds and not self.simulator:
            for _, path in self.kernel_modules:
                record_compiled(path)
        return "kernels"

    @contextmanager
    def _simulating(self):
        """The simulator runs each block's threads as Python threads and
        polls them; a short GIL switch interval lets them make progress
        (syncthreads-heavy kernels ran ~5x faster). GPU runs are untouched."""
        if not self.simulator:
            yield
            return
        with _SIMULATOR_LOCK:   # the simulator cannot run two launches at once
            old = sys.getswitchinterval()
            sys.setswitchinterval(1e-4)
            try:
                yield
            finally:
                sys.setswitchinterval(old)

    def buffer_value(self, workspace, node, batch):
        shape = resolve(node.shape, batch)
        dev = workspace[0][self.plan.buffers[node.id]]
        return dev.copy_to_host().reshape(shape) if dev.size else np.zeros(shape, node.dtype)


_SIMULATOR_LOCK = threading.Lock()


def _flat_size(shape, batch):
    return int(np.prod(resolve(shape, batch), dtype=np.int64))


__all__ = ["CudaBackend", "Limits", "check_available", "generate", "simulator_enabled"]

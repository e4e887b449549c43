"""Lower a fusion plan to Numba CUDA kernels, one module per kernel structure.

One `@cuda.jit` kernel per planned kernel (views need none: readers index
the aliased buffer directly), built from the same plan and scalar formulas
as the CPU kernels. Each is written into a module of its own with names
that depend on nothing but the kernel (its arrays are `a0, a1, ...` in
order of first use, its locals numbered), so identical kernels (the hidden
layers of an MLP, the steps of an unrolled sequence) are one module, one
GPU compile and one cache entry, shared by every function and process.
The kinds of kernel:

* loop kernels without reductions: a grid-stride loop over the flat
  iteration space, the index split into i0, i1, ... for broadcast reads;
* loop kernels with reductions: `rn` threads of a block cooperate on each
  output element (`on` outputs per block), each folding a strided share of
  the reduced elements into its accumulator, then a shared-memory tree
  combines the `rn` partials (`rn` a power of two; partials of threads past
  the end are the identity, so any size works). With `rn == 1` (short
  reductions) each thread owns an output: no shared memory, no barrier.
  Rows (last axis reduced) put the reducing threads along x, columns put
  the outputs along x, so neighbouring threads read neighbouring elements
  either way;
* matmul: a tiled shared-memory GEMM, or one thread per output element for
  small products (`tiled` chosen at launch); transposed or reshaped
  operands are just other index expressions of the same buffer;
* random (the counter-based `uniform_hash`, inlined from its one
  definition), size_of, argmax, and copies of deferred updates.

Every array is passed flat (1-d, C order); `lowering.flat_offset` turns an
index of any view into an offset in the buffer it aliases. Sizes are
compile-time constants except the batch size `N`, the first argument of
every kernel; block sizes are chosen at launch from the shapes (see
`launch.py`), and only the matmul tile edge `TILE` is a constant in the
source. Shared memory is dynamic, sized at launch: besides fitting the
block, this avoids a race in the simulator, whose static `shared.array`
allocation is check-then-set across its Python threads (two threads could
get different arrays; seen as a rare wrong reduction).
"""
import ast
import re
from dataclasses import dataclass, field, replace

import numpy as np

from ...ops import nn as nn_ops
from . import conv, indexing
from .scan import scan_launches
from ...passes.fuse import scan_step_nodes
from ...ops.nn import uniform_hash
from ..lowering import (kernel_emitter, typed_const, ScalarContext, Names, dim_expr, operand_axes, reduced_axes,
                        acc_dtype, acc_init, accumulate, acc_final, size_expr, linear_index, split_index,
                        flat_offset, inline_function, view_chain)


@dataclass
class KernelSpec:
    """One generated kernel: how to launch it and what it takes."""
    name: str
    form: str                 # loop | reduce | matmul | random | size_of | argmax | copy
    args: list                # argument names: scalars ("N", "rlog", "tiled") or flat arrays
    launch: dict              # symbolic sizes for the launch configuration
    describe: str = ""
    dtypes: dict = field(default_factory=dict)   # array argument -> NumPy dtype
    float64_sums: int = 0     # float sums/means here, accumulated in float64
    means: int = 0
    float64_values: bool = False   # the graph itself computes or reads float64 values here
    module: int = 0           # index of its module in Generator.kernel_sources


class Generator:
    # Kernels of op families kept together, found by form (`emit_<form>`):
    # convolutions and pooling as direct loops, slicing/concat/take.
    EMITTER_MODULES = (conv, indexing)

    def __init__(self, program, plan, tile, simulator=False):
        from ...graph.traverse import topo_sort
        # A copy whose inline constants and in-place updates a scan's step
        # extends with its own (`scan.py`), leaving the backend's plan as it is.
        self.program, self.plan = program, replace(plan, inline=dict(plan.inline), in_place=dict(plan.in_place))
        self.tile, self.simulator = tile, simulator
        order = topo_sort(plan.roots + [p for p, _ in program.updates])
        unused = [t for t in program.inputs if t.id not in {n.id for n in order}]
        bodies = [n for k in plan.kernels if k.body is not None for n in scan_step_nodes(k)]
        self.names = Names(unused + order + bodies)
        # Leaves: params, state, constants; a scan's step adds the constants
        # its optimization made (its other leaves are the scan's inputs).
        body_inline = {i for k in plan.kernels if k.body is not None for i in k.body.plan.inline}
        self.leaves = [n for n in order if n.op is None and n.kind != "input" and n.id not in plan.inline]
        self.leaves += list({n.id: n for n in bodies if n.kind == "constant" and n.id not in body_inline}.values())
        self.specs = []
        self.overrides = {}       # node id -> array argument: a scan step's ports and buffers
        self.extra_buffers = []   # (shape, dtype) of scan steps' buffers, after the plan's
        self.loops = []           # `scan.Loop` of each scan

    # ----- flat storage ------------------------------------------------------------
    def storage(self, n):
        """The flat array argument holding (base) node n's values."""
        if n.id in self.plan.in_place:
            return self.storage(self.plan.in_place[n.id])
        if n.id in self.overrides:
            return self.overrides[n.id]
        if n.op is None:
            return self.names[n]
        return f"b{self.plan.buffers[n.id]}"

    def _use(self, array, dtype):
        if array not in self._args:
            self._args.append(array)
            self._dtypes[array] = np.dtype(dtype)
        return array

    def read(self, t, idx):
        """Expression for element `idx` (per-axis expressions) of node t."""
        base, off = flat_offset(t, idx)
        if base.id in self.plan.inline:
            return typed_const(self.plan.inline[base.id], base.dtype)
        return f"{self._use(self.storage(base), base.dtype)}[{off}]"

    def write(self, n, idx, value, offset=None):
        """Store `value` as element `idx` (or at flat `offset`) of (base) node n."""
        array = self._use(self.storage(n), n.dtype)
        return f"{array}[{linear_index(idx, n.shape) if offset is None else offset}] = {value}"

    # ----- emission ----------------------------------------------------------------
    def emit(self, line, depth):
        self.lines.append("    " * depth + line)

    def _start(self, name, nodes):
        self.lines, self._args, self._dtypes, self._nodes = [], [], {}, list(nodes)
        self._kernel_name = name

    def _finish(self, form, launch, describe, scalars=("N",), reductions=()):
        args = list(scalars) + self._args
        sums = [r for r in reductions if r.op.reduction.combine == "add" and r.dtype.kind == "f"]
        f64 = any(dt == np.float64 for dt in self._dtypes.values()) or any(
            n.dtype == np.float64 for n in self._nodes)
        source = self._module_source(form, scalars)
        module = self._module_index.setdefault(source, len(self.kernel_sources))
        if module == len(self.kernel_sources):
            self.kernel_sources.append(source)
        self.specs.append(KernelSpec(self._kernel_name, form, args, launch, describe, dict(self._dtypes),
                                     len(sums), sum(r.op.reduction.mean for r in sums), f64, module))
        return [f"# {describe}: module {module}({', '.join(args)})"]

    def _module_source(self, form, scalars):
        """The kernel as a module of its own, named by structure only: array
        arguments become a0, a1, ... and locals (e_, x_, acc_, sh_ + a node's
        name) are numbered in order of first use."""
        from ... import __version__
        import numba_cuda
        renamed = {a: f"a{j}" for j, a in enumerate(self._args)}
        program_names = set(self.names.names.values())

        def rename(m):
            word = m.group(0)
            if word not in renamed:
                prefix = next((p for p in _LOCAL_PREFIXES if word.startswith(p) and word[len(p):] in program_names),
                              None)
                if prefix is None:
                    return word
                renamed[word] = f"{prefix}{len(renamed) - len(self._args)}"
            return renamed[word]

        params = list(scalars) + [f"a{j}" for j in range(len(self._args))]
        body = [_IDENTIFIER.sub(rename, line) for line in self.lines]
        ops = ", ".join(n.op.name for n in self._nodes if n.op is not None) if form != "copy" else ""
        mode = "simulator" if self.simulator else "gpu"
        return "\n".join([
            f"# Generated by bpc {__version__}: one CUDA kernel, shared by every step that launches it.",
            f"# numba-cuda {numba_cuda.__version__}, built for the {mode}; {form} [{ops}]",
            ("from bpc.backends.cuda.simulator_math import math   # NaN/Inf as on a GPU, not exceptions"
             if self.simulator else "import math"),
            "from numba import cuda, float32, float64, int32, int64", "",
            "# The matmul tile edge (tiles of TILE x TILE threads).",
            f"TILE = {self.tile}", "",
            "# Constant of the counter-based generator (bpc.ops.nn.uniform_hash), inlined below.",
            f"_M31 = {hex(nn_ops._M31)}", "",
            "@cuda.jit(cache=True)", f"def kernel({', '.join(params)}):"] + body) + "\n"

    def source(self):
        """The launches, in order, as text for people (the kernels are in
        `kernel_sources`, one module each)."""
        from ... import __version__
        out = [f"# Generated by bpc {__version__}: the CUDA kernels of one compiled function,",
               "# launched in this order by bpc.backends.cuda: name: module index(arguments)."]
        self.specs, self.kernel_sources, self._module_index = [], [], {}
        self.overrides, self.extra_buffers, self.loops = {}, [], []
        count = 0
        for k in self.plan.kernels:
            if k.form == "view":
                continue
            if k.form == "scan":
                lines, count = scan_launches(self, k, count)
                out += lines
                continue
            last = k.nodes[-1]
            self._start(f"k{count}_{self.names[last]}", k.nodes)
            count += 1
            describe = f"{self._kernel_name}: {k.form} [{', '.join(n.op.name for n in k.nodes)}]"
            out += kernel_emitter(self, k, "cuda")(k, describe)
        # Updates not written in place, after every kernel: values that are
        # themselves updated leaves are saved first ({A: B, B: A} swaps).
        snapshots = self.plan.snapshots
        for value, b in snapshots.values():
            self._start(f"k{count}_save_{self.names[value]}", [value])
            count += 1
            out += self._kernel_copy(f"b{b}", value, value, f"{self._kernel_name}: save the pre-step "
                                                            f"value of {self.names[value]}")
        for param, value in self.plan.copies:
            self._start(f"k{count}_update_{self.names[param]}", [param])
            count += 1
            saved = f"b{snapshots[value.id][1]}" if value.id in snapshots else None
            out += self._kernel_copy(self.storage(param), param, value,
                                     f"{self._kernel_name}: copy the new value of {self.names[param]}", saved=saved)
        return "\n".join(out) + "\n"

    # ----- helpers --------------------------------------------------------------------
    def _split(self, var, axes, shape, depth):
        """i{a} = ... for `axes` of `shape` from the flat index `var`."""
        sub = [shape[a] for a in axes]
        for a, e in zip(axes, split_index(var, sub)):
            self.emit(f"i{a} = {e}", depth)

    def _grid_stride(self, var, total, depth):
        self.emit(f"for {var} in range(cuda.grid(1), {total}, cuda.gridsize(1)):", depth)

    # ----- loop kernels -----------------------------------------------------------------
    def _kernel_loop(self, k, describe):
        shape = k.shape
        reductions = [m for m in k.nodes if m.op.iteration == "reduce"]
        ids = {m.id for m in k.nodes}
        loaded = {}
        # Loop-invariant operands (all dims 1) are read once, before the loops.
        for m in k.nodes:
            for i in m.inputs:
                if i.id not in ids and i.id not in self.plan.inline and all(d == 1 for d in i.shape) \
                        and m.op.gather is None:
                    self._value(i, k, ids, loaded, 1)
        if not reductions:
            total = size_expr(shape)
            self.emit(f"total = {total}", 1)
            self._grid_stride("t", "total", 1)
            self._split("t", list(range(len(shape))), shape, 2)
            self._body(k, ids, loaded, 2)
            return self._finish("loop", {"total": shape}, describe)
        return self._reduction_loop(k, describe, reductions, ids, loaded)

    def _reduction_loop(self, k, describe, reductions, ids, loaded):
        """A loop kernel with reductions. Kept as one function (~60 lines)
        on purpose: it writes one kernel's text top to bottom, and the
        order of its lines is the order of the kernel's statements."""
        shape, axes = k.shape, k.axes
        outer = [a for a in range(len(shape)) if a not in axes]
        inner = list(axes)
        # Rows: the last axis is reduced, so the reducing threads (x) read
        # neighbouring elements. Columns: the outputs go along x instead.
        rows = not outer or outer[-1] < inner[-1]
        x, y = ("rt", "ot") if rows else ("ot", "rt")
        self.emit(f"{x} = cuda.threadIdx.x", 1)
        self.emit(f"{y} = cuda.threadIdx.y", 1)
        self.emit(f"{x[0]}n = cuda.blockDim.x", 1)
        self.emit(f"{y[0]}n = cuda.blockDim.y", 1)
        self.emit("lane = ot * rn + rt", 1)
        # Partials live in dynamic shared memory sized at launch: one 8-byte
        # slot per thread and reduction (see `launch.configure`).
        self.emit("nthreads = rn * on", 1)
        for j, r in enumerate(reductions):
            dt = acc_dtype(r)
            start = j * (8 // dt.itemsize)
            self.emit(f"sh_{self.names[r]} = cuda.shared.array(0, {dt.name})"
                      f"[{start} * nthreads:{start + 1} * nthreads]" if start else
                      f"sh_{self.names[r]} = cuda.shared.array(0, {dt.name})[:nthreads]", 1)
        self.emit(f"outer_total = {size_expr([shape[a] for a in outer])}", 1)
        self.emit(f"inner_total = {size_expr([shape[a] for a in inner])}", 1)
        # Whole blocks step together (the bounds depend on the block only),
        # so every thread reaches every syncthreads.
        self.emit("for ob in range(cuda.blockIdx.x * on, outer_total, cuda.gridDim.x * on):", 1)
        self.emit("o = ob + ot", 2)
        self._split("o", outer, shape, 2)
        for r in reductions:
            self.emit(f"acc_{self.names[r]} = {acc_init(r)}", 2)
        self.emit("if o < outer_total:", 2)
        self.emit("for r in range(rt, inner_total, rn):", 3)
        self._split("r", inner, shape, 4)
        self._body(k, ids, loaded, 4)
        # One thread per output (rn == 1, chosen at launch for short
        # reductions): no shared memory, no barrier. rn is the same for the
        # whole block, so every thread takes the same branch.
        self.emit("if rn == 1:", 2)
        self.emit("if o < outer_total:", 3)
        for r in reductions:
            self.emit(self.write(r, reduced_axes(r, shape), acc_final(r, f"acc_{self.names[r]}")), 4)
        self.emit("else:", 2)
        for r in reductions:
            self.emit(f"sh_{self.names[r]}[lane] = acc_{self.names[r]}", 3)
        self.emit("cuda.syncthreads()", 3)
        self.emit("s = rn >> 1", 3)
        self.emit("for _ in range(rlog):", 3)
        self.emit("if rt < s:", 4)
        for r in reductions:
            sh = f"sh_{self.names[r]}"
            self.emit(f"other = {sh}[lane + s]", 5)
            for rel, line in accumulate(r, f"{sh}[lane]", "other"):
                self.emit(line, 5 + rel)
        self.emit("cuda.syncthreads()", 4)
        self.emit("s = s >> 1", 4)
        self.emit("if rt == 0 and o < outer_total:", 3)
        for r in reductions:
            self.emit(self.write(r, reduced_axes(r, shape), acc_final(r, f"sh_{self.names[r]}[lane]")), 4)
        self.emit("cuda.syncthreads()", 3)
        launch = {"outer": [shape[a] for a in outer], "inner": [shape[a] for a in inner], "rows": rows,
                  "slots": len(reductions)}
        return self._finish("reduce", launch, describe, scalars=("N", "rlog"), reductions=reductions)

    def _body(self, k, ids, loaded, depth):
        """The members of loop kernel k at one element: the ops' scalar
        formulas, stores of values used outside, reductions' folds."""
        stored = {m.id for m in k.stores} | set(self.plan.in_place)
        # Updates written in place here: read the old values of those
        # parameters before any store, whatever the members' order.
        written = {self.plan.in_place[m.id].id for m in k.nodes if m.id in self.plan.in_place}
        for m in k.nodes:
            for i in m.inputs:
                if i.id not in ids and view_chain(i)[-1].id in written:
                    self._value(i, k, ids, loaded, depth)
        for m in k.nodes:
            if m.op.iteration == "reduce":
                v = self._value(m.inputs[0], k, ids, loaded, depth)
                for rel, line in accumulate(m, f"acc_{self.names[m]}", v):
                    self.emit(line, depth + rel)
                continue
            if m.op.gather is not None:   # a read of its input elsewhere (a slice)
                src, cond = m.op.gather(m.attrs, operand_axes(m.shape, k.shape), lambda a, v: str(v))
                value = self.read(m.inputs[0], src)
                self.emit(f"e_{self.names[m]} = {value}" if cond is None else
                          f"e_{self.names[m]} = {value} if {cond} else {typed_const(0, m.dtype)}", depth)
            else:
                args = [self._value(i, k, ids, loaded, depth) for i in m.inputs]
                self.emit(f"e_{self.names[m]} = {m.op.scalar(ScalarContext(m), *args)}", depth)
            if m.id in stored:
                self.emit(self.write(m, operand_axes(m.shape, k.shape), f"e_{self.names[m]}"), depth)

    def _value(self, t, k, ids, loaded, depth):
        if t.id in ids:
            return f"e_{self.names[t]}"
        if t.id in self.plan.inline:
            return typed_const(self.plan.inline[t.id], t.dtype)
        if t.id not in loaded:
            name = f"x_{self.names[t]}"
            self.emit(f"{name} = {self.read(t, operand_axes(t.shape, k.shape))}", depth)
            loaded[t.id] = name
        return loaded[t.id]

    # ----- matrix product -----------------------------------------------------------------
    def _kernel_matmul(self, k, describe):
        """A tiled shared-memory GEMM, or one thread per output element for
        small products. A batched product runs its (broadcast) matrices one
        after another along the grid's z axis; one summed over batch axes by
        its only reader (a weight's gradient: k.nodes = [product, sum])
        accumulates those in the same thread, so the stack never exists."""
        n = k.node
        a, b = n.inputs
        batch = n.shape[:-2]
        total = k.nodes[1] if len(k.nodes) == 2 else None
        summed = total.attrs["axis"] if total is not None else ()
        outer_shape = tuple(d for j, d in enumerate(batch) if j not in summed)
        summed_shape = tuple(batch[j] for j in summed)
        outer_idx = iter(split_index("ob", outer_shape)) if outer_shape else iter(())
        summed_idx = iter(split_index("sb", summed_shape)) if summed_shape else iter(())
        bidx = [next(summed_idx) if j in summed else next(outer_idx) for j in range(len(batch))]

        def item(t, last):   # index of t's element at batch index bidx
            lead = t.shape[:-2]
            return ["0" if d == 1 else bidx[len(batch) - len(lead) + j] for j, d in enumerate(lead)] + last

        def store(value, row, col):
            if total is None:
                return self.write(n, item(n, [row, col]), value)
            keep = total.attrs["keepdims"]
            idx = ["0" if j in summed else bidx[j] for j in range(len(batch)) if keep or j not in summed]
            return self.write(total, idx + [row, col], value)

        m_dim, k_dim, p_dim = (dim_expr(d) for d in (a.shape[-2], a.shape[-1], b.shape[-1]))
        dt = n.dtype.name
        zero = typed_const(0, n.dtype)
        # The two tiles live in dynamic shared memory sized at launch.
        self.emit(f"sa = cuda.shared.array(0, {dt})[:TILE * TILE]", 1)
        self.emit(f"sb_ = cuda.shared.array(0, {dt})[TILE * TILE:2 * TILE * TILE]", 1)
        self.emit(f"rows = {m_dim}", 1)
        self.emit(f"inner = {k_dim}", 1)
        self.emit(f"cols = {p_dim}", 1)
        self.emit(f"outer = {size_expr(outer_shape)}", 1)
        self.emit(f"summed = {size_expr(summed_shape)}", 1)
        # Small products (chosen at launch): one thread per output element,
        # a grid-stride loop with no shared memory or barriers.
        self.emit("if tiled == 0:", 1)
        self._grid_stride("t", "outer * rows * cols", 2)
        self.emit("ob = t // (rows * cols)", 3)
        self.emit("rc = t - ob * rows * cols", 3)
        self.emit("row = rc // cols", 3)
        self.emit("col = rc - row * cols", 3)
        self.emit(f"acc = {zero}", 3)
        self.emit("for sb in range(summed):", 3)
        self.emit("for kk in range(inner):", 4)
        self.emit(f"acc += {self.read(a, item(a, ['row', 'kk']))} * {self.read(b, item(b, ['kk', 'col']))}", 5)
        self.emit(store("acc", "row", "col"), 3)
        self.emit("return", 2)
        # Tiled: each block computes TILE x TILE outputs, staging TILE-wide
        # slices of both operands in shared memory (zeros past the edges).
        # Whole blocks step over tiles together (the bounds depend on the
        # block only), so every thread reaches every barrier.
        self.emit("tx = cuda.threadIdx.x", 1)
        self.emit("ty = cuda.threadIdx.y", 1)
        self.emit("for ob in range(cuda.blockIdx.z, outer, cuda.gridDim.z):", 1)
        self.emit("for tr in range(cuda.blockIdx.y, (rows + TILE - 1) // TILE, cuda.gridDim.y):", 2)
        self.emit("for tc in range(cuda.blockIdx.x, (cols + TILE - 1) // TILE, cuda.gridDim.x):", 3)
        self.emit("row = tr * TILE + ty", 4)
        self.emit("col = tc * TILE + tx", 4)
        self.emit(f"acc = {zero}", 4)
        self.emit("for sb in range(summed):", 4)
        self.emit("for k0 in range(0, inner, TILE):", 5)
        self.emit("ka = k0 + tx", 6)
        self.emit("kb = k0 + ty", 6)
        self.emit("if row < rows and ka < inner:", 6)
        self.emit(f"sa[ty * TILE + tx] = {self.read(a, item(a, ['row', 'ka']))}", 7)
        self.emit("else:", 6)
        self.emit(f"sa[ty * TILE + tx] = {zero}", 7)
        self.emit("if kb < inner and col < cols:", 6)
        self.emit(f"sb_[ty * TILE + tx] = {self.read(b, item(b, ['kb', 'col']))}", 7)
        self.emit("else:", 6)
        self.emit(f"sb_[ty * TILE + tx] = {zero}", 7)
        self.emit("cuda.syncthreads()", 6)
        self.emit("for kk in range(TILE):", 6)
        self.emit("acc += sa[ty * TILE + kk] * sb_[kk * TILE + tx]", 7)
        self.emit("cuda.syncthreads()", 6)
        self.emit("if row < rows and col < cols:", 4)
        self.emit(store("acc", "row", "col"), 5)
        launch = {"rows": a.shape[-2], "inner": a.shape[-1], "cols": b.shape[-1], "outer": outer_shape,
                  "itemsize": n.dtype.itemsize}
        return self._finish("matmul", launch, describe, scalars=("N", "tiled"))

    # ----- small kernels --------------------------------------------------------------------
    def _kernel_random(self, k, describe):
        n = k.node
        self.emit(f"counter = {self.read(n.inputs[0], [])}", 1)
        self.emit(f"total = {size_expr(n.shape)}", 1)
        self._grid_stride("t", "total", 1)
        lines, result = inline_function(uniform_hash, [f"int64({n.attrs['seed']})", "counter", "t"], "rh_")
        for line in lines:
            self.emit(line, 2)
        self.emit(self.write(n, None, _uniform_value(result, n.dtype), offset="t"), 2)
        return self._finish("random", {"total": n.shape}, describe)

    def _kernel_size_of(self, k, describe):
        n = k.node
        dims = [dim_expr(n.inputs[0].shape[a]) for a in n.attrs["axis"]] or ["1"]
        self.emit("if cuda.grid(1) == 0:", 1)
        self.emit(self.write(n, [], f"{n.dtype.name}({' * '.join(dims)})"), 2)
        return self._finish("size_of", {"total": ()}, describe)

    def _kernel_argmax(self, k, describe):
        n = k.node
        x = n.inputs[0]
        axis = n.attrs["axis"][0]
        outer = [a for a in range(x.ndim) if a != axis]
        self._grid_stride("t", size_expr([x.shape[a] for a in outer]), 1)
        self._split("t", outer, x.shape, 2)
        idx = lambda var: [var if a == axis else f"i{a}" for a in range(x.ndim)]
        self.emit(f"best = {self.read(x, idx('0'))}", 2)
        self.emit("arg = int64(0)", 2)
        self.emit(f"for r in range(1, {dim_expr(x.shape[axis])}):", 2)
        self.emit(f"v = {self.read(x, idx('r'))}", 3)
        self.emit("if v > best or (v != v and best == best):", 3)   # the first NaN wins, as in NumPy
        self.emit("best = v", 4)
        self.emit("arg = r", 4)
        out = [("0" if a == axis else f"i{a}") for a in range(x.ndim)] if n.attrs["keepdims"] \
            else [f"i{a}" for a in outer]
        self.emit(self.write(n, out, "arg"), 2)
        return self._finish("argmax", {"total": [x.shape[a] for a in outer]}, describe)

    def _kernel_copy(self, dst, like, value, describe, saved=None):
        """Copy `value` into the flat array `dst` (shaped like node `like`):
        a deferred update, after every kernel that reads the old value, or
        the saving of a value first. `saved` names a buffer already holding
        the value, flat."""
        self.emit(f"total = {size_expr(like.shape)}", 1)
        self._grid_stride("t", "total", 1)
        if value.id in self.plan.inline:
            src = typed_const(self.plan.inline[value.id], like.dtype)
        elif saved is not None:
            src = f"{self._use(saved, value.dtype)}[t]"
        else:
            src = self.read(value, split_index("t", like.shape))
        self.emit(f"{self._use(dst, like.dtype)}[t] = {src}", 2)
        return self._finish("copy", {"total": like.shape}, describe)


_IDENTIFIER = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_LOCAL_PREFIXES = ("e_", "x_", "acc_", "sh_")


def _uniform_value(result, dtype):
    """`uniform_hash` ends by scaling an integer h < 2**31 by 2**-31 in
    float64. Scaling by a power of two commutes with rounding, so
    `dtype(h) * dtype(2**-31)` is the same number without float64
    arithmetic in float32 kernels."""
    if isinstance(result, ast.BinOp) and isinstance(result.op, ast.Mult):
        try:
            scale = eval(compile(ast.Expression(result.right), "<uniform_hash>", "eval"), {})
        except Exception:
            scale = None
        if isinstance(scale, float) and scale > 0 and np.frexp(scale)[0] == 0.5:
            return f"{dtype.name}({ast.unparse(result.left)}) * {typed_const(scale, dtype)}"
    return f"{dtype.name}({ast.unparse(result)})"

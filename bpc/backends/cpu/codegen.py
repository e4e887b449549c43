"""Lower a fusion plan to Numba code: one compiled function per kernel
structure, called in order by a runner that every step shares.

Each planned kernel (a fused loop nest, a matrix product, a copy...) is
written as a function in a module of its own, with names that depend on
nothing but the kernel. It takes the batch size `N`, a table of
addresses and a table of sizes (`runner.py`); its prologue makes an array
of each address (`carray`, with the shape and dtype the plan gave that
buffer), then takes the views (transpose, reshape) it reads. Loop kernels
over activations have their sizes in the source (LLVM unrolls and
vectorizes short static loops), except sizes before the batch dimension
(the time axis of time-major sequences), read from the table so that one
module serves every sequence length; kernels without loops of their own
(matrix products, copies) and elementwise kernels over whole parameter-
shaped buffers (optimizer updates, run as one flat loop) read theirs from
the table (`s0, s1, ...`; size 1 stays in the source, as it decides
broadcasting), so one compiled function serves every shape: one Adam
kernel updates every weight matrix and bias.
Locals are numbered within the kernel. So its source, and with it the
cache key (`cache.py`), is a function of the kernel's structure alone
(ops, attributes, dtypes, ranks, static sizes, which operands are the same
array): the identical hidden layers of an MLP run one compiled function,
shared with every other step and process that needs it, and Numba
compiles a handful of small functions instead of one function that grows
with the graph (its compile time grows faster than the function).

Each kernel module holds the same body twice: compiled serially for small
batches, where waking threads costs more than the work, and with
`parallel=True` (`prange` over each loop nest's outer axis) for large
ones. Loop bodies are the ops' scalar formulas; matrix products are
`np.dot` calls into BLAS with transposes passed as views.
"""
import inspect
from dataclasses import replace
import math

import numpy as np

from ...graph.tensor import format_shape
from ...ops.nn import uniform_hash
from . import blas, conv, indexing
from .scan import scan_calls
from ...passes.fuse import scan_step_nodes
from ..lowering import (kernel_emitter, typed_const, ScalarContext, Names, dim_expr, shape_expr, tuple_expr,
                        operand_index,
                        reduced_index, acc_dtype, acc_init, accumulate, acc_final, view_chain)

# No 'nnan'/'ninf' (NaN and Inf must stay observable), and no 'afn' or
# 'reassoc': with either, LLVM folds exp(log(x)) into x and hides log(-1)'s NaN.
FASTMATH_FLAGS = ("contract", "arcp", "nsz")
FASTMATH = "{" + ", ".join(map(repr, FASTMATH_FLAGS)) + "}"   # as source text, in a fixed order
# bpc fuses loops itself. Numba's own fusion of adjacent prange loops does
# not see through views: it merged a loop reading `v = b0.T` with the next
# loop writing b0, so elements were read after they were overwritten.
PARALLEL = "{'fusion': False}"
VARIANTS = ("serial", "parallel")

# Kernel forms whose sizes (and offsets) are read from the sizes table at
# run time: one compiled module serves every product, concat or gather of a
# structure. (Slices run inside the loops that read them.)
RUN_TIME_SIZES = ("matmul", "concat", "take", "take_grad")
# A reduction over leading axes cuts its rows into at most COLUMN_PARTS parts
# of at least COLUMN_PART_ROWS rows (`_column_loops`).
COLUMN_PARTS, COLUMN_PART_ROWS = 16, 16
KERNEL_PREFIX = "bpc_kernel"

# float32 tanh as a ratio of two polynomials in x² over [-7.9, 7.9] (beyond,
# tanh is ±1 in float32; from |x| = 9 on, exactly ±1): within 3e-7 of tanh,
# NaN stays NaN, and made of
# multiplies, adds and one division, which LLVM vectorizes, where math.tanh
# is a libm call per element. The coefficients are Eigen's (also XLA's).
# A 32x128 LSTM gate loop: 180 us with libm, 6.5 us with this.
TANH32 = """@njit(inline='always', fastmath=""" + FASTMATH + """, error_model='numpy')
def tanh32(x0):
    x = min(max(x0, float32(-7.90531110763549805)), float32(7.90531110763549805))
    x2 = x * x
    p = float32(-2.76076847742355e-16)
    p = p * x2 + float32(2.00018790482477e-13)
    p = p * x2 + float32(-8.60467152213735e-11)
    p = p * x2 + float32(5.12229709037114e-08)
    p = p * x2 + float32(1.48572235717979e-05)
    p = p * x2 + float32(6.37261928875436e-04)
    p = p * x2 + float32(4.89352455891786e-03)
    q = float32(1.19825839466702e-06)
    q = q * x2 + float32(1.18534705686654e-04)
    q = q * x2 + float32(2.26843463243900e-03)
    q = q * x2 + float32(4.89352518554385e-03)
    r = x * p / q
    # Exactly +-1 where float32 tanh rounds to it (the ratio stops 2e-7 short).
    return r if not (abs(x0) >= float32(9.0)) else (float32(1.0) if x0 > float32(0.0) else float32(-1.0))"""


class KernelWriter:
    """The source of one kernel function, named by structure only: the
    storage it uses becomes table entries `p[0], p[1], ...` in order of
    first use (an array used twice is one entry), and nodes become locals
    numbered in order of first use."""

    def __init__(self, gen, describe, sizes_at_run_time=False):
        self.gen = gen
        self.describe = describe
        self.sizes_at_run_time = sizes_at_run_time
        self.slots = []         # storage index of each table entry
        self.sizes = []         # the value of each s{k}, read from the sizes table
        self.flat = None        # a flat loop's 1-d shape (source text)
        self._slot_of = {}
        self._arrays = {}
        self._locals = {}
        self.entry_args = []    # the arrays the entry makes of the table's addresses
        self.prologue = []      # views, taken in the body
        self.lines = []
        self.uses_hash = False
        self.uses_blas = False
        self._scratch_count = {}
        # Loop kernels over time-major stacks (T, N, ...): sizes before the
        # batch dimension, and those same sizes wherever they appear (the
        # batch-major input (N, T, ...)), come from the sizes table (`lead`),
        # so one compiled loop serves every sequence length.
        self.time_at_run_time = False
        self.lead_sizes = set()

    def array(self, n):
        """A local holding node n's value as an array (its storage, or a view of it)."""
        if n.id in self._arrays:
            return self._arrays[n.id]
        gen = self.gen
        if n.id in gen.plan.in_place:
            name = self.array(gen.plan.in_place[n.id])
        elif n.op is not None and n.op.is_view:
            # In a flat loop a reshape is its base: the same elements in the same order.
            name = self._view(n) if self.flat is None else self.array(view_chain(n)[-1])
        else:
            if self.flat is None:
                shape = self.shape(n.shape)
            else:   # a flat loop: whole buffers are 1-d, single elements (1,)
                shape = "(1,)" if all(d == 1 for d in n.shape) else self.flat
            name = self.storage(gen.storage_index(n), shape, n.dtype)
        self._arrays[n.id] = name
        return name

    def storage(self, index, shape, dtype):
        """A local holding storage `index` as an array of `shape` (source text) and `dtype`."""
        if index not in self._slot_of:
            j = len(self.slots)
            self._slot_of[index] = f"a{j}"
            self.slots.append(index)
            self.entry_args.append(f"carray(p[{j}], {shape}, np.{dtype.name})")
        return self._slot_of[index]

    def _view(self, n):
        base = view_chain(n)[-1]
        name = self.local(n, "v")
        if base.id in self.gen.plan.inline:   # a view of an inlined scalar (grad's seed, unoptimized)
            const = typed_const(self.gen.plan.inline[base.id], base.dtype)
            self.prologue.append(f"{name} = np.full({self.shape(n.shape)}, {const})")
            return name
        src = self.array(n.inputs[0])
        if n.op.name == "transpose":
            axes = n.attrs["axes"]
            expr = f"{src}.T" if len(axes) == 2 else f"{src}.transpose({axes})"
        else:
            contiguous = not any(x.op is not None and x.op.name == "transpose" for x in view_chain(n.inputs[0]))
            expr = (f"{src}" if contiguous else f"np.ascontiguousarray({src})") + f".reshape({self.shape(n.shape)})"
        self.prologue.append(f"{name} = {expr}")
        return name

    def dim(self, d):
        """Source for one size: N (the batch size), a constant, or (with
        sizes_at_run_time) the next entry s{k} of the sizes table."""
        if d is None:
            return "N"
        if not self.sizes_at_run_time or d == 1:
            return str(d)
        self.sizes.append(d)
        return f"s{len(self.sizes) - 1}"

    def value(self, v):
        """Source for an integer the kernel is written with (a slice's start,
        an offset): itself, or (with sizes_at_run_time) the next entry of the
        sizes table, so kernels that differ only in such numbers share one
        compiled module."""
        return self.number(v) if self.sizes_at_run_time else str(v)

    def number(self, v):
        """Source for an integer read from the sizes table, whatever the
        kernel's mode (a loop's leading time dimension, a slice's start)."""
        self.sizes.append(int(v))
        return f"s{len(self.sizes) - 1}"

    def lead(self, d):
        """Source for size d, read at run time if it is one of `lead_sizes`."""
        return self.number(d) if d in self.lead_sizes else self.dim(d)

    def shape(self, shape):
        if not self.time_at_run_time:
            return shape_expr(shape, self.dim)
        before = shape.index(None) if None in shape else 0
        return tuple_expr([self.number(d) if a < before and d != 1 else self.lead(d) for a, d in enumerate(shape)])

    def scratch(self, shape, dtype):
        """A local holding a scratch array of symbolic `shape` (None: the
        batch size) and `dtype`, allocated once per workspace rather than on
        every call (a 5 MB np.empty per call cost ~3 ms of page faults in a
        LeNet step). Its content does not outlive the kernel."""
        gen = self.gen
        key = (tuple(shape), np.dtype(dtype))
        # The k-th request of a shape in a kernel gets the k-th scratch of that
        # shape: distinct within a kernel, shared between kernels.
        ordinal = self._scratch_count[key] = self._scratch_count.get(key, -1) + 1
        if (key, ordinal) not in gen.scratch_index:
            gen.scratch_index[key, ordinal] = len(gen.scratch_specs)
            gen.scratch_specs.append(key)
        return self.storage(gen.n_storage + gen.scratch_index[key, ordinal], self.shape(shape), np.dtype(dtype))

    def address(self, value):
        """Source for a run-time value that is no size (a function's address,
        a `blas.Address`): the next entry s{k} of the sizes table."""
        self.sizes.append(value)
        return f"s{len(self.sizes) - 1}"

    def local(self, node, prefix="t"):
        key = (prefix, node.id)
        if key not in self._locals:
            self._locals[key] = f"{prefix}{len(self._locals)}"
        return self._locals[key]

    def emit(self, line, depth):
        self.lines.append("    " * depth + line)

    def has_parallel_loop(self):
        return any("prange(" in line for line in self.prologue + self.lines)

    def module_source(self):
        from ... import __version__
        out = [f"# Generated by bpc {__version__}: one kernel, shared by every step that runs it.",
               f"# {self.describe}",
               "import math", "import numpy as np",
               "from numba import carray, njit, prange, float32, float64, int32, int64", ""]
        if self.uses_blas:
            out += [f"from bpc.backends.cpu.blas import cblas_gemm  # version {blas.CALL_VERSION}", ""]
        if any("tanh32(" in line for line in self.lines):
            out += [TANH32, ""]
        if self.uses_hash:
            out += ["# The counter-based generator of dropout masks, from bpc.ops.nn.",
                    "_M31 = 0x7FFFFFFF", "", inspect.getsource(uniform_hash),
                    "uniform_hash_jit = njit(inline='always')(uniform_hash)", ""]
        # serial: the C entry point itself makes arrays of the table's addresses and runs the body.
        sizes = [f"    s{k} = d[{k}]" for k in range(len(self.sizes))]
        arrays = [f"    a{j} = {a}" for j, a in enumerate(self.entry_args)]
        body = ["    " + line for line in self.prologue] + self.lines
        out += ["def serial(N, p, d):"] + sizes + arrays + body + [""]
        if not self.has_parallel_loop():   # nothing for threads to share: one variant
            return "\n".join(out + ["parallel = serial", ""])
        # parallel: Numba's parallel lowering gave wrong results inside a C
        # entry point, so the entry calls a parallel function with the arrays.
        names = ["N"] + [f"s{k}" for k in range(len(self.sizes))]
        params = ", ".join(names + [f"a{j}" for j in range(len(self.slots))])
        out += [f"@njit(parallel={PARALLEL}, fastmath={FASTMATH}, error_model='numpy', nogil=True, "
                "no_cpython_wrapper=True)", f"def parallel_body({params}):"] + body + [""]
        out += ["def parallel(N, p, d):"] + sizes + [f"    parallel_body({', '.join(names + self.entry_args)})", ""]
        return "\n".join(out) + "\n"


class Generator:
    """The unique kernel modules of one step and the calls that run it."""

    # Kernels of op families kept together, found by form (`emit_<form>`):
    # convolutions and pooling as im2col + BLAS, slicing/concat/take loops.
    EMITTER_MODULES = (conv, indexing)

    def __init__(self, program, plan):
        from ...graph.traverse import topo_sort
        # A copy whose inline constants and in-place updates a scan's step
        # extends with its own (`scan.py`), leaving the backend's plan as it is.
        self.program, self.plan = program, replace(plan, inline=dict(plan.inline), in_place=dict(plan.in_place))
        self.gemm = blas.numpy_gemm()
        order = topo_sort(plan.roots + [p for p, _ in program.updates])
        unused = [t for t in program.inputs if t.id not in {n.id for n in order}]
        bodies = [n for k in plan.kernels if k.body is not None for n in scan_step_nodes(k)]
        self.names = Names(unused + order + bodies)
        # Leaves: params, state, constants; a scan's step adds the constants
        # its optimization made (its other leaves are the scan's inputs).
        body_inline = {i for k in plan.kernels if k.body is not None for i in k.body.plan.inline}
        self.leaves = [n for n in order if n.op is None and n.kind != "input" and n.id not in plan.inline]
        self.leaves += list({n.id: n for n in bodies if n.kind == "constant" and n.id not in body_inline}.values())
        # Storage, indexed: the inputs, the leaves (params, state, constants), the buffers.
        self._storage = {t.id: i for i, t in enumerate(program.inputs)}
        for n in self.leaves:
            self._storage[n.id] = len(self._storage)
        self._n_fixed = len(self._storage)
        self.n_storage = self._n_fixed + len(plan.buffer_specs)
        # Scratch arrays kernels ask for (`KernelWriter.scratch`), after the
        # storage above: (symbolic shape, dtype), one per distinct request,
        # allocated with each workspace (kernels run one at a time).
        self.scratch_specs = []
        self.scratch_index = {}
        self.kernel_sources = []     # unique kernel modules, in order of first call
        self.calls = []              # (index into kernel_sources, storage index of each table entry,
        #                               the sizes it reads, describe, the plan's kernel or None,
        #                               None or each entry's byte offset (a, b): a + b * N, `scan.py`)
        self._kernel_index = {}
        self.repeats = {}            # call index -> (steps, calls per step) of a scan's first step
        self._buffer_storage = lambda b: self._n_fixed + b
        for k in plan.kernels:
            if k.form == "view":     # views are taken inside the kernels that read them
                continue
            if k.form == "scan":
                scan_calls(self, k)
                continue
            ops = ", ".join(n.op.name for n in k.nodes)
            w = KernelWriter(self, f"{k.form} [{ops}]", sizes_at_run_time=k.form in RUN_TIME_SIZES)
            kernel_emitter(self, k, "cpu")(k, w)
            if w.flat is not None:
                w.describe += f" over {w.flat[1:-2]} elements, flat"
            elif k.form == "loop":
                # (sizes read at run time show as T: the source is the same for every length)
                shown = tuple("T" if d in w.lead_sizes else d for d in k.shape)
                w.describe += f" over {format_shape(shown)}" + (f" reducing axes {k.axes}" if k.axes else "")
            self._call(w, k.describe(), k)
        self._copies()

    def add_storage(self, shape, dtype):
        """A new array of the workspace (symbolic shape, dtype) that no other
        request shares: its storage index."""
        self.scratch_specs.append((tuple(shape), np.dtype(dtype)))
        return self.n_storage + len(self.scratch_specs) - 1

    def storage_index(self, n):
        """Index of the array holding (base, non-view) node n: an input, a leaf or a buffer."""
        if n.id in self._storage:
            return self._storage[n.id]
        return self._n_fixed + self.plan.buffers[n.id]

    def _call(self, w, describe, kernel=None):
        src = w.module_source()
        idx = self._kernel_index.setdefault(src, len(self.kernel_sources))
        if idx == len(self.kernel_sources):
            self.kernel_sources.append(src)
        self.calls.append((idx, w.slots, w.sizes, describe, kernel, None))

    def listing(self, module_names):
        """The step as text: one line per kernel call, for people reading it."""
        storage = ([self.names[t] for t in self.program.inputs] + [self.names[n] for n in self.leaves]
                   + [f"b{i}" for i in range(len(self.plan.buffer_specs))]
                   + [f"scratch{i}" for i in range(len(self.scratch_specs))])
        lines = ["# The step: the runner calls these kernels in order (N = batch size).",
                 "# Workspace buffers: " + ", ".join(f"b{i} {dt.name}{format_shape(s)}"
                                                     for i, (s, dt) in enumerate(self.plan.buffer_specs))]
        if self.scratch_specs:
            lines.append("# Scratch arrays: " + ", ".join(f"scratch{i} {dt.name}{format_shape(s)}"
                                                          for i, (s, dt) in enumerate(self.scratch_specs)))
        skip = 0
        for c, (idx, slots, sizes, describe, _, offsets) in enumerate(self.calls):
            if c in self.repeats:
                steps, per = self.repeats[c]
                lines.append(f"# scan: the next {per} calls run {steps} times, once per time step, "
                             "on that step's slices of the stacks (+offset: bytes into the array)")
                skip = per * steps
            if skip and skip <= per * (steps - 1):
                skip -= 1
                continue
            skip = max(0, skip - 1)
            args = [storage[s] + (f"+{a}" if a else "") + (f"+{b}N" if b else "")
                    for s, (a, b) in zip(slots, offsets or [(0, 0)] * len(slots))]
            lines.append(f"# {describe}: {module_names[idx]}(N, {', '.join(args)})" + (f" sizes {sizes}" if sizes else ""))
        return lines

    def _copies(self, plan=None):
        """Updates not written in place: every new value is computed by now;
        values that are themselves updated leaves are saved first, so the
        writes are simultaneous ({A: B, B: A} swaps)."""
        plan = plan or self.plan
        snapshots = plan.snapshots
        for value, b in snapshots.values():
            self._copy(("buffer", b, value), value, value.ndim)
        for param, value in plan.copies:
            if value.id in self.plan.inline:
                self._copy(param, None, param.ndim, typed_const(self.plan.inline[value.id], param.dtype))
            else:
                src = ("buffer", snapshots[value.id][1], value) if value.id in snapshots else value
                self._copy(param, src, param.ndim)

    def _copy(self, dst, src, ndim, const=None):
        """dst[...] = src (or the constant), as loops: Numba's slice
        assignment costs ~0.5 s of compile time per use."""
        w = KernelWriter(self, f"copy, {ndim}-d" if const is None else f"fill with {const}, {ndim}-d",
                         sizes_at_run_time=True)
        d = self._copy_operand(w, dst)
        s = const if const is not None else self._copy_operand(w, src)
        for a in range(ndim):
            w.emit(f"for i{a} in {'prange' if a == 0 else 'range'}({d}.shape[{a}]):", a + 1)
        idx = ", ".join(f"i{a}" for a in range(ndim)) or "()"
        w.emit(f"{d}[{idx}] = {s if const is not None else f'{s}[{idx}]'}", ndim + 1)
        self._call(w, "update copy" if const is None else "update fill")

    def _copy_operand(self, w, x):
        """A node, or ("buffer", b, value): the snapshot buffer b saving value."""
        if isinstance(x, tuple):
            _, b, value = x
            return w.storage(self._buffer_storage(b), w.shape(value.shape), value.dtype)
        return w.array(x)

    # ----- kernels -------------------------------------------------------------
    def _kernel_matmul(self, k, w):
        """C = A @ B through NumPy's BLAS (`gemm_call`). Operands are
        C-ordered arrays; a transposed view passes its base with the
        transpose flag. Batched products call it once per matrix of the
        (broadcast) batch, or once in all where the batch can be merged into
        the rows; a product summed over batch axes accumulates into the sum."""
        n = k.node
        (a, ta), (b, tb) = (self._gemm_operand(i, w) for i in n.inputs)
        a, b = (self._bind(w, name, arr) for name, arr in (("mat_a", a), ("mat_b", b)))
        if k.update is not None:   # p += alpha * A @ B, in place (SGD's step, a scan's gradient sum)
            update, alpha = k.update
            self.gemm_call(w, n.dtype, a, ta, b, tb, w.array(update), alpha=alpha, beta=1.0)
            return
        batch = n.shape[:-2]
        if not batch:
            self.gemm_call(w, n.dtype, a, ta, b, tb, w.array(n))
            return
        total = k.nodes[1] if len(k.nodes) == 2 else None
        summed = total.attrs["axis"] if total is not None else ()
        x, y = n.inputs
        full = lambda t: t.shape[:-2] == batch          # an operand with the whole batch of its own
        unbatched = lambda t: all(d == 1 for d in t.shape[:-2])
        rows = lambda arr, t: f"{arr}.reshape((-1, {arr}.shape[{t.ndim - 1}]))"
        if total is None and full(x) and ta == blas.NO_TRANS and unbatched(y):
            # A stack of matrices times one matrix: one product over all their rows.
            self.gemm_call(w, n.dtype, rows(a, x), ta, self._batch_item(b, y, batch), tb, rows(w.array(n), n))
            return
        if total is not None and len(summed) == len(batch) and full(x) and full(y) and ta == blas.TRANS \
                and tb == blas.NO_TRANS:
            # sum_i X_i^T @ Y_i (a weight's gradient): the stacks' rows are one inner dimension.
            out = w.array(total)
            self.gemm_call(w, n.dtype, rows(a, x), ta, rows(b, y), tb,
                           f"{out}.reshape(({out}.shape[{total.ndim - 2}], {out}.shape[{total.ndim - 1}]))")
            return
        depth = 1
        if total is not None:
            w.emit(f"{w.array(total)}[:] = 0", depth)
        for j, d in enumerate(batch):
            w.emit(f"for i{j} in range({w.dim(d)}):", depth)
            depth += 1
        if total is None:
            out = self._batch_item(w.array(n), n, batch)
        else:
            keep = total.attrs["keepdims"]
            idx = ["0" if j in summed else f"i{j}" for j in range(len(batch)) if keep or j not in summed]
            out = f"{w.array(total)}[{', '.join(idx)}]" if idx else w.array(total)
        self.gemm_call(w, n.dtype, self._batch_item(a, x, batch), ta, self._batch_item(b, y, batch), tb, out,
                       beta=0.0 if total is None else 1.0, depth=depth)

    @staticmethod
    def _bind(w, name, expr, depth=1):
        """A local for array expression `expr` (evaluated once)."""
        if expr.isidentifier():
            return expr
        w.emit(f"{name} = {expr}", depth)
        return name

    @staticmethod
    def _batch_item(arr, t, batch):
        """Source for the matrix of operand t (array `arr`) at batch index
        i0, i1, ... of a product over `batch`: t's leading dimensions align
        to the right and its size-1 ones broadcast."""
        lead = t.shape[:-2]
        skip = len(batch) - len(lead)
        idx = ["0" if d == 1 else f"i{skip + j}" for j, d in enumerate(lead)]
        return f"{arr}[{', '.join(idx)}]" if idx else arr

    def gemm_call(self, w, dtype, a, ta, b, tb, out, alpha=1.0, beta=0.0, depth=1):
        """Emit out = alpha * op(a) @ op(b) + beta * out through NumPy's
        BLAS (`blas.py`): a, b, out are C-ordered 2-d arrays (source text),
        ta/tb CBLAS transpose flags, alpha a number, beta a number or source
        text (where it is 0, out is not read). Without NumPy's BLAS: np.dot."""
        if not isinstance(beta, str):
            beta = typed_const(beta, dtype)
        elif not beta.isidentifier():
            w.emit(f"gemm_beta = {dtype.name}({beta})", depth)
            beta = "gemm_beta"
        if self.gemm is None:
            view = lambda x, t: f"{x}.T" if t == blas.TRANS else x
            product = f"np.dot({view(a, ta)}, {view(b, tb)})"
            scaled = product if alpha == 1.0 else f"{typed_const(alpha, dtype)} * {product}"
            if beta == typed_const(0.0, dtype):
                w.emit(f"np.dot({view(a, ta)}, {view(b, tb)}, {out})" if alpha == 1.0 else f"{out}[:] = {scaled}",
                       depth)
            else:
                w.emit(f"if {beta} == 0:", depth)
                w.emit(f"{out}[:] = {scaled}", depth + 1)
                w.emit("else:", depth)
                w.emit(f"{out}[:] = {scaled} + {beta} * {out}", depth + 1)
            return
        a, b, out = (self._bind(w, name, x, depth) for name, x in (("gemm_a", a), ("gemm_b", b), ("gemm_c", out)))
        w.uses_blas = True
        fn = w.address(blas.Address(self.gemm.address(dtype), self.gemm.symbol(dtype)))
        inner = f"{a}.shape[{0 if ta == blas.TRANS else 1}]"
        w.emit(f"cblas_gemm({fn}, {self.gemm.index_bits}, {ta}, {tb}, {out}.shape[0], {out}.shape[1], {inner}, "
               f"{typed_const(alpha, dtype)}, {a}.ctypes.data, {a}.shape[1], {b}.ctypes.data, {b}.shape[1], "
               f"{beta}, {out}.ctypes.data, {out}.shape[1])", depth)

    def _gemm_operand(self, t, w):
        """(C-ordered array, CBLAS transpose flag) of a product's operand: a
        transpose of the two last axes of a buffer is that buffer, flagged;
        any other strided view is copied once."""
        chain = view_chain(t)
        swap = tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2)
        if len(chain) == 2 and chain[0].op.name == "transpose" and chain[0].attrs["axes"] == swap:
            return w.array(chain[1]), blas.TRANS
        contiguous = not any(v.op.name == "transpose" for v in chain[:-1])
        return (w.array(t) if contiguous else f"np.ascontiguousarray({w.array(t)})"), blas.NO_TRANS

    def _kernel_size_of(self, k, w):
        n = k.node
        dims = [dim_expr(n.inputs[0].shape[a]) for a in n.attrs["axis"]] or ["1"]
        w.emit(f"{w.array(n)}[()] = {n.dtype.name}({' * '.join(dims)})", 1)

    def _kernel_random(self, k, w):
        n = k.node
        w.uses_hash = True
        out, counter = w.array(n), w.array(n.inputs[0])
        total = " * ".join(dim_expr(d) for d in n.shape) or "1"
        w.emit(f"flat = {out}.reshape(({total},))", 1)
        w.emit(f"counter = {counter}[()]", 1)
        w.emit(f"for j in prange({total}):", 1)
        w.emit(f"flat[j] = {n.dtype.name}(uniform_hash_jit(int64({n.attrs['seed']}), counter, int64(j)))", 2)

    def _kernel_argmax(self, k, w):
        n = k.node
        x = n.inputs[0]
        src = w.array(x)
        axis = n.attrs["axis"][0]
        outer = [a for a in range(x.ndim) if a != axis]
        depth = 1
        for j, a in enumerate(outer):
            w.emit(f"for i{a} in {'prange' if j == 0 else 'range'}({dim_expr(x.shape[a])}):", depth)
            depth += 1
        idx = lambda ax_var: ", ".join(ax_var if a == axis else f"i{a}" for a in range(x.ndim))
        w.emit(f"best = {src}[{idx('0')}]", depth)
        w.emit("arg = 0", depth)
        w.emit(f"for r in range(1, {dim_expr(x.shape[axis])}):", depth)
        w.emit(f"v = {src}[{idx('r')}]", depth + 1)
        w.emit("if v > best or (v != v and best == best):", depth + 1)
        w.emit("best = v", depth + 2)
        w.emit("arg = r", depth + 2)
        out_idx = [f"i{a}" if a != axis else "0" for a in range(x.ndim)] if n.attrs["keepdims"] \
            else [f"i{a}" for a in outer]
        w.emit(f"{w.array(n)}[{', '.join(out_idx) if out_idx else '()'}] = arg", depth)

    def _kernel_loop(self, k, w):
        shape, axes = k.shape, k.axes
        if self._flat(k):
            # One loop over the flat index, its size read at run time: one
            # compiled kernel serves every shape and rank (the Adam update of
            # every param), and the loop is as long as it can be.
            w.sizes_at_run_time = True
            bounds = [w.dim(math.prod(shape))]
            w.flat = f"({bounds[0]},)"
            index = lambda t: "0" if all(d == 1 for d in t.shape) else "i0"
        else:
            # Time-major loops (a static size before the batch's) read those
            # sizes at run time: sequences of every length share the module.
            w.time_at_run_time = True
            if None in shape:
                w.lead_sizes = {d for d in shape[:shape.index(None)] if d != 1}
            bounds = [w.lead(d) for d in shape]
            index = lambda t: operand_index(t.shape, shape)
        reductions = [m for m in k.nodes if m.op.iteration == "reduce"]
        ids = {m.id for m in k.nodes}
        stored = {m.id for m in k.stores}
        deferred = []
        loaded = {}
        # Loop-invariant operands (scalars) are read once, before the loops;
        # parallel loops cannot index 0-d arrays anyway.
        for m in k.nodes:
            for i in m.inputs:
                if i.id not in ids and i.id not in self.plan.inline and all(d == 1 for d in i.shape) \
                        and m.op.gather is None:
                    self._value(i, w, ids, loaded, 1, index)
        # Reductions over leading axes only that keep the rest: in memory order.
        columns = bool(reductions) and axes == tuple(range(len(axes))) and len(axes) < len(shape) \
            and all(tuple(sorted(r.attrs["axis"])) == axes for r in reductions)
        depth, acc, finish = (self._column_loops if columns else self._row_loops)(k, w, bounds, reductions)
        for m in k.nodes:
            if m.op.iteration == "reduce":
                x = self._value(m.inputs[0], w, ids, loaded, depth, index)
                for rel, line in accumulate(m, acc(m), x):
                    w.emit(line, depth + rel)
                continue
            name = w.local(m)
            if m.op.gather is not None:   # a read of its input elsewhere (a slice)
                # Numbers on axes before the batch's (a time axis) are read at run time,
                # the others stay in the source (an offset LLVM sees vectorizes: a gate
                # loop reading its slices' starts from the table took 69 us, not 8).
                before = m.shape.index(None) if None in m.shape else 0
                src, cond = m.op.gather(m.attrs, [f"i{a}" for a in range(len(k.shape))],
                                        lambda a, v: w.number(v) if a < before else str(v))
                value = f"{w.array(m.inputs[0])}[{', '.join(src) or '()'}]"
                w.emit(f"{name} = {value}" if cond is None else
                       f"{name} = {value} if {cond} else {typed_const(0, m.dtype)}", depth)
            else:
                args = [self._value(i, w, ids, loaded, depth, index) for i in m.inputs]
                w.emit(f"{name} = {m.op.scalar(ScalarContext(m, rational_tanh=True), *args)}", depth)
            if m.id in self.plan.in_place or m.id in stored:
                store = f"{w.array(m)}[{index(m)}] = {name}"
                if m.id in self.plan.in_place:
                    deferred.append(store)   # written last: a later member may still read the old value
                else:
                    w.emit(store, depth)
        for line in deferred:
            w.emit(line, depth)
        finish()

    def _row_loops(self, k, w, bounds, reductions):
        """Loops over the kept axes, then the reduced ones innermost, with one
        scalar accumulator per reduction: memory order when the reduced axes
        come last (a row's sum). Returns (body depth, accumulator of r, a
        function that writes the results after the body)."""
        outer = [a for a in range(len(bounds)) if a not in k.axes]
        # prange over the first loop; a full reduction may race only on sums,
        # which Numba turns into per-thread partials.
        first_parallel = bool(outer) or all(r.op.reduction.combine == "add" for r in reductions)
        depth = 1
        for j, a in enumerate(outer):
            w.emit(f"for i{a} in {'prange' if j == 0 else 'range'}({bounds[a]}):", depth)
            depth += 1
        for r in reductions:
            w.emit(f"{w.local(r, 'acc')} = {acc_init(r)}", depth)
        for j, a in enumerate(k.axes):
            par = "prange" if (j == 0 and not outer and first_parallel) else "range"
            w.emit(f"for i{a} in {par}({bounds[a]}):", depth)
            depth += 1

        def finish():
            for r in reductions:
                w.emit(f"{w.array(r)}[{reduced_index(r, k.shape)}] = {acc_final(r, w.local(r, 'acc'))}",
                       depth - len(k.axes))
        return depth, lambda r: w.local(r, "acc"), finish

    def _column_loops(self, k, w, bounds, reductions):
        """Loops in memory order for reductions over leading axes that keep
        the trailing ones (a bias gradient's sum over the batch): the rows
        (first axis) are cut into parts, run in parallel,
        each summing into its own row of partial results, which a second
        loop then combines. With the reduced axes innermost instead, every
        step of the inner loop jumped a row: 3.6 ms instead of 0.15 for a
        512x1024 bias gradient. (Blocks of columns with a runtime width
        gave slow code in Numba's parallel lowering.) Returns as
        `_row_loops` does."""
        kept = list(range(len(k.axes), len(bounds)))
        rows = bounds[0]
        kept_index = "".join(f", i{a}" for a in kept)
        part = lambda r: f"{w.local(r, 'part')}[part{kept_index}]"
        w.emit(f"nparts = max(1, min({rows} // {COLUMN_PART_ROWS}, {COLUMN_PARTS}))", 1)
        for r in reductions:   # partial results: workspace scratch, no allocation per call
            w.emit(f"{w.local(r, 'part')} = {w.scratch((COLUMN_PARTS,) + k.shape[len(k.axes):], acc_dtype(r))}", 1)
        w.emit("for part in prange(nparts):", 1)
        depth = 2
        for a in kept:         # this part's row of partial results starts at the fold's identity
            w.emit(f"for i{a} in range({bounds[a]}):", depth + a - kept[0])
        for r in reductions:
            w.emit(f"{part(r)} = {acc_init(r)}", depth + len(kept))
        w.emit(f"for i0 in range(part * {rows} // nparts, (part + 1) * {rows} // nparts):", 2)
        depth = 3
        for a in list(k.axes[1:]) + kept:
            w.emit(f"for i{a} in range({bounds[a]}):", depth)
            depth += 1

        def finish():   # each kept index's result from the parts' partial results (serially: little work)
            depth = 1
            for a in kept:
                w.emit(f"for i{a} in range({bounds[a]}):", depth)
                depth += 1
            for r in reductions:
                w.emit(f"{w.local(r, 'acc')} = {acc_init(r)}", depth)
            w.emit("for part in range(nparts):", depth)
            for r in reductions:
                for rel, line in accumulate(r, w.local(r, "acc"), part(r)):
                    w.emit(line, depth + 1 + rel)
            for r in reductions:
                w.emit(f"{w.array(r)}[{reduced_index(r, k.shape)}] = {acc_final(r, w.local(r, 'acc'))}", depth)
        return depth, part, finish

    def _flat(self, k):
        """Whether loop kernel k runs as one loop over the flat index: no
        batch dimension (parameter-shaped work: optimizer updates), no
        reductions, every member of the iteration shape, and every operand
        a single element or of that shape, stored in that order (a buffer,
        or a reshape of one; not a transpose). Loops over activations keep
        their static inner sizes: flattening them too slowed a tiny MLP
        step ~15%."""
        if k.axes or not k.shape or None in k.shape:
            return False
        ids = {m.id for m in k.nodes}
        for m in k.nodes:
            if m.shape != k.shape:
                return False
            for i in m.inputs:
                if i.id in ids or i.id in self.plan.inline:
                    continue
                chain = view_chain(i)
                if chain[-1].id in self.plan.inline:   # a view of an inlined scalar: not flat
                    return False
                if all(d == 1 for d in i.shape):
                    continue
                if i.shape != k.shape or any(v.op.name == "transpose" for v in chain[:-1]):
                    return False
        return True

    def _value(self, t, w, ids, loaded, depth, index):
        if t.id in ids:
            return w.local(t)
        if t.id in self.plan.inline:
            return typed_const(self.plan.inline[t.id], t.dtype)
        if t.id not in loaded:
            name = w.local(t, "x")
            w.emit(f"{name} = {w.array(t)}[{index(t)}]", depth)
            loaded[t.id] = name
        return loaded[t.id]

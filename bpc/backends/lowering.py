"""Lowering pieces shared by the code generators (CPU and CUDA).

Both targets write Python source that Numba compiles, so the scalar
expressions, names, typed constants, broadcast indexing and reduction
accumulators are generated once, here; each backend only decides how loops
and launches are written.
"""
import math

import numpy as np


def typed_const(value, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        v = float(value)
        text = "math.nan" if math.isnan(v) else ("math.inf" if v == math.inf else
                                                 "-math.inf" if v == -math.inf else repr(v))
    else:
        text = str(int(value))
    return f"{dtype.name}({text})"


class ScalarContext:
    """What an op's scalar formula sees: typed constants, its attributes,
    and how the target spells tanh: `rational_tanh` (cpu, float32) calls
    `tanh32`, a ratio of polynomials that LLVM vectorizes (the cpu
    target's kernels define it), where `math.tanh` is a scalar libm call
    per element (Numba finds no vector math library here)."""

    def __init__(self, node, rational_tanh=False):
        self.attrs = node.attrs
        self.dtype_name = node.dtype.name
        self.rational_tanh = rational_tanh and node.dtype.name == "float32"

    def c(self, value):
        return typed_const(value, self.dtype_name)

    def tanh(self, a):
        return f"tanh32({a})" if self.rational_tanh else f"math.tanh({a})"


class Names:
    """Identifiers for generated code, made by bpc alone: `{op or kind}_{k}`
    with k the node's position in the program. User names never reach
    generated identifiers (a name like `np`, `return`, `x_b` or `σ²` is
    just data), and the same program gives the same source, and cache key,
    in every process whatever its nodes are called. `legend` maps the
    identifiers back to user names, for people reading the source."""

    def __init__(self, order):
        self.names, self.nodes = {}, []
        for pos, n in enumerate(order):
            base = n.op.name if n.op is not None else n.kind
            assert base.isidentifier() and base.isascii(), f"op name {base!r} cannot start an identifier"
            self.names[n.id] = f"{base}_{pos}"
            self.nodes.append(n)

    def __getitem__(self, node):
        return self.names[node.id]

    def legend(self):
        """Comment lines: each identifier of a named node and the user's name,
        shape, dtype and line."""
        from ..graph.tensor import format_shape
        lines = []
        for n in self.nodes:
            if n.op is None or n.user_named:
                what = n.kind if n.op is None else n.op.name
                lines.append(f"# {self.names[n.id]}: {what} {ascii(n.name)[:80]} "
                             f"{n.dtype.name}{format_shape(n.shape)}, built at {ascii(n.where)[1:-1][:120]}")
        return lines


def dim_expr(d):
    return "N" if d is None else str(d)


def shape_expr(shape, dim=dim_expr):
    """Source for a shape tuple; `dim` writes each size."""
    return tuple_expr([dim(d) for d in shape])


def tuple_expr(items):
    """Source for a tuple of the source texts `items`."""
    return "(" + "".join(e + ", " for e in items).rstrip(" ") + ")" if len(items) != 1 else f"({items[0]},)"


def operand_axes(tshape, shape):
    """Per-axis index of an operand of shape `tshape` inside a loop nest over
    `shape` (loop variables i0, i1, ...): broadcast (size-1 or missing) axes
    read element 0."""
    off = len(shape) - len(tshape)
    return ["0" if d == 1 else f"i{a + off}" for a, d in enumerate(tshape)]


def operand_index(tshape, shape):
    """`operand_axes` as one subscript ("()" for a 0-d operand)."""
    if not tshape:
        return "()"
    return ", ".join(operand_axes(tshape, shape))


def reduced_axes(r, shape):
    """Per-axis index where reduction node r stores the value for the
    current outer index."""
    axes = r.attrs["axis"]
    if r.attrs["keepdims"]:
        return ["0" if a in axes else f"i{a}" for a in range(len(shape))]
    return [f"i{a}" for a in range(len(shape)) if a not in axes]


def reduced_index(r, shape):
    """`reduced_axes` as one subscript."""
    idx = reduced_axes(r, shape)
    return ", ".join(idx) if idx else "()"


def acc_dtype(r):
    """The dtype reduction r accumulates in (`Reduction.wide`): float64 for
    float sums and means, because float32 running sums drift (the NumPy
    reference accumulates the same way), int64 for integer ones; a float max
    keeps its dtype."""
    if not r.op.reduction.wide and r.dtype.kind == "f":
        return r.dtype
    return np.dtype("float64") if r.dtype.kind == "f" else np.dtype("int64")


def acc_init(r):
    """Initial accumulator: the identity of the reduction's fold."""
    dtype = acc_dtype(r)
    if r.op.reduction.combine == "max":
        return typed_const(-math.inf, dtype) if dtype.kind == "f" else f"int64({np.iinfo(np.int64).min})"
    return typed_const(0, dtype)


def accumulate(r, acc, x):
    """Lines (relative indentation, text) folding x into the accumulator."""
    if r.op.reduction.combine == "max":  # keeps NaN, as np.max does
        return [(0, f"if {x} > {acc} or {x} != {x}:"), (1, f"{acc} = {x}")]
    return [(0, f"{acc} += {x}")]


def acc_final(r, acc):
    """The stored value of reduction r from its accumulator."""
    if r.op.reduction.mean:
        count = " * ".join(dim_expr(r.inputs[0].shape[a]) for a in r.attrs["axis"]) or "1"
        return f"{r.dtype.name}({acc} / ({count}))"
    return f"{r.dtype.name}({acc})"


def conv_geometry(n, x_shape, w_shape, out_hw):
    """The sizes a convolution kernel (`bpc/ops/conv.py`) is written with:
    strides, paddings, dilations, input (C, H, W), weights (O, C/groups, kh,
    kw), output (OH, OW), per-group channels Og and Cg, groups G, K = Cg*kh*kw
    and P = OH*OW."""
    (sh, sw), (ph, pw), (dh, dw), groups = (n.attrs[k] for k in ("stride", "padding", "dilation", "groups"))
    C, H, W = x_shape[1:]
    O, Cg, kh, kw = w_shape
    OH, OW = out_hw
    return dict(sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw, C=C, H=H, W=W, O=O, Cg=Cg, kh=kh, kw=kw,
                OH=OH, OW=OW, Og=O // groups, G=groups, K=Cg * kh * kw, P=OH * OW)


def pool_search(n, x, element):
    """Source lines finding, in window (oh, ow) of max-pooling node n over
    x, the position (bh, bw) of x's first maximum inside the image (NaN
    counts as the maximum, as np.argmax); `element(h, w)` is the source of
    x's element at row h, column w of the window's image and channel.
    Without padding every window lies inside the image: the search is
    branch-free, a pass for the maximum (and whether there is a NaN), then
    one from the end for its first position (selects only: on cpu a
    short-circuit `>` or `!=` test per element was 7-18x slower on random
    data, mispredicted branches; one pass tracking the best offset and the
    first NaN's took twice as long as these two)."""
    (sh, sw), (ph, pw) = n.attrs["stride"], n.attrs["padding"]
    kh, kw = n.attrs["kernel_hw"]
    H, W = x.shape[2:]
    if (ph, pw) == (0, 0):
        return [f"best = {element(f'oh * {sh}', f'ow * {sw}')}", "nan = False",
                f"for i in range({kh}):",
                f"    for j in range({kw}):",
                f"        xv = {element(f'oh * {sh} + i', f'ow * {sw} + j')}",
                "        nan |= xv != xv",
                "        best = xv if xv > best else best",
                "k = 0",
                f"for q in range({kh * kw - 1}, -1, -1):",
                f"    xv = {element(f'oh * {sh} + q // {kw}', f'ow * {sw} + q % {kw}')}",
                "    hit = (xv != xv) if nan else (xv == best)",
                "    k = q if hit else k",
                f"bh = oh * {sh} + k // {kw}",
                f"bw = ow * {sw} + k % {kw}"]
    return [f"best = {element('0', '0')}", "bh = -1", "bw = -1",
            f"for i in range({kh}):",
            f"    hh = oh * {sh} - {ph} + i",
            f"    if hh >= 0 and hh < {H}:",
            f"        for j in range({kw}):",
            f"            ww = ow * {sw} - {pw} + j",
            f"            if ww >= 0 and ww < {W}:",
            f"                xv = {element('hh', 'ww')}",
            "                if bh < 0 or xv > best or (xv != xv and best == best):",
            "                    best = xv", "                    bh = hh", "                    bw = ww"]


def kernel_emitter(generator, k, target):
    """The function that writes kernel k for a target: its code generator's
    `_kernel_<form>` method (`loop`, or an op's `kernel`), else
    `emit_<form>(generator, k, ...)` of one of the modules the generator
    lists in `EMITTER_MODULES` (a family of ops' kernels kept together:
    conv.py, indexing.py). A form without one is an error naming the op and
    the target, raised when the function is built."""
    emit = getattr(generator, f"_kernel_{k.form}", None)
    if emit is not None:
        return emit
    for module in getattr(generator, "EMITTER_MODULES", ()):
        fn = getattr(module, f"emit_{k.form}", None)
        if fn is not None:
            return lambda *args: fn(generator, *args)
    from ..errors import CompileError
    op = k.nodes[0]
    raise CompileError(f"op '{op.op.name}' ('{op.name}', built at {op.where}) has no kernel on target "
                       f"'{target}': its kernel form '{k.form}' needs an emitter `_kernel_{k.form}` in "
                       f"bpc/backends/{target}/codegen.py (or `emit_{k.form}` in a module it lists in "
                       f"EMITTER_MODULES); target 'interpret' runs it")


def view_chain(t):
    """t, then the views it is made of, down to the buffer they alias."""
    chain = [t]
    while t.op is not None and t.op.is_view:
        t = t.inputs[0]
        chain.append(t)
    return chain


# ----- flat (1-d) addressing, for targets that keep every array flat --------------
#
# The CUDA target passes each buffer to its kernels as a flat C-ordered 1-d
# array and computes offsets itself: views (transpose, reshape) then cost no
# copy and no strided device array, only index arithmetic in the reader.

def _product(dims):
    """Source for the product of dims (ints and None = the batch size N),
    constants folded: (None, 6, 7) -> "N * 42"."""
    const, batch = 1, 0
    for d in dims:
        if d is None:
            batch += 1
        else:
            const *= d
    parts = ["N"] * batch + ([str(const)] if const != 1 or not batch else [])
    return " * ".join(parts)


def size_expr(shape):
    """Source for the number of elements of `shape`."""
    return _product(shape)


def linear_index(idx, shape):
    """Flat C-order offset of index expressions `idx` into an array of
    `shape`; constant-zero and size-1 axes drop out."""
    terms = []
    for a, (i, d) in enumerate(zip(idx, shape)):
        if i == "0" or d == 1:
            continue
        stride = _product(shape[a + 1:])
        terms.append(i if stride == "1" else f"({i}) * {stride}" if not i.isidentifier() else f"{i} * {stride}")
    return " + ".join(terms) if terms else "0"


def split_index(flat, shape):
    """Per-axis index expressions of the flat C-order offset `flat` (an
    expression) into an array of `shape`."""
    out = []
    live = [a for a, d in enumerate(shape) if d != 1]
    for a, d in enumerate(shape):
        if d == 1:
            out.append("0")
            continue
        stride = _product(shape[a + 1:])
        q = flat if stride == "1" else f"({flat}) // ({stride})"
        out.append(q if a == live[0] else f"({q}) % {dim_expr(d)}")
    return out


def flat_offset(t, idx):
    """(base node, offset expression): where element `idx` of node t lives in
    the flat buffer of the node its views alias. A reshape of a C-ordered
    buffer keeps flat offsets; a transpose permutes the index; a reshape of
    a transposed view goes through its flat index."""
    chain = view_chain(t)
    if all(n.op.name == "reshape" for n in chain[:-1]):
        return chain[-1], linear_index(idx, t.shape)
    x = t.inputs[0]
    if t.op.name == "transpose":
        inner = [None] * len(idx)
        for a, p in enumerate(t.attrs["axes"]):
            inner[p] = idx[a]
        return flat_offset(x, inner)
    return flat_offset(x, split_index(linear_index(idx, t.shape), x.shape))


def inline_function(fn, args, prefix):
    """Statements computing `fn(*args)` inline, for targets that cannot call
    helper functions (CUDA kernels compiled to PTX without a driver):
    returns (lines, result expression). Parameters become the argument
    expressions and locals get `prefix`, so the helper's own source (one
    definition, e.g. `uniform_hash`) stays the single source of truth."""
    import ast
    import inspect
    import textwrap
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    params = [a.arg for a in tree.args.args]
    bound = dict(zip(params, args))
    local_names = {n.id for node in tree.body for n in ast.walk(node)
                   if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}

    class Rename(ast.NodeTransformer):
        def visit_Name(self, node):
            if node.id in bound:
                return ast.copy_location(ast.parse(f"({bound[node.id]})", mode="eval").body, node)
            if node.id in local_names:
                return ast.copy_location(ast.Name(prefix + node.id, node.ctx), node)
            return node

    lines, result = [], None
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue   # the docstring
        stmt = Rename().visit(stmt)
        if isinstance(stmt, ast.Return):
            result = stmt.value
            break
        lines.append(ast.unparse(stmt))
    return lines, result

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
    """What an op's scalar formula sees: typed constants and its attributes."""

    def __init__(self, node):
        self.attrs = node.attrs
        self.dtype_name = node.dtype.name

    def c(self, value):
        return typed_const(value, self.dtype_name)


def _ident(name):
    out = "".join(ch if ch.isalnum() else "_" for ch in name)
    return out if out and not out[0].isdigit() else "_" + out


class Names:
    """Stable, readable identifiers: user-given names are kept, derived nodes
    are named by op and position, so the same program gives the same source
    (and cache key) in every process."""

    def __init__(self, order):
        self.names, used = {}, set()
        for pos, n in enumerate(order):
            # Inputs and params carry the user's names; bpc-made state (dropout
            # counters, optimizer moments) may embed process-specific ids.
            keep = n.kind in ("input", "param") or (n.user_named and n.op is not None)
            base = _ident(n.name) if keep else f"{n.op.name if n.op else n.kind}{pos}"
            name, k = base, 1
            while name in used:
                name, k = f"{base}_{k}", k + 1
            used.add(name)
            self.names[n.id] = name

    def __getitem__(self, node):
        return self.names[node.id]


def dim_expr(d):
    return "N" if d is None else str(d)


def shape_expr(shape):
    return "(" + "".join(dim_expr(d) + ", " for d in shape).rstrip(" ") + ")" if len(shape) != 1 \
        else f"({dim_expr(shape[0])},)"


def operand_index(tshape, shape):
    """Index of an operand of shape `tshape` inside a loop nest over `shape`
    (loop variables i0, i1, ...): broadcast (size-1 or missing) axes read
    element 0."""
    if not tshape:
        return "()"
    off = len(shape) - len(tshape)
    return ", ".join("0" if d == 1 else f"i{a + off}" for a, d in enumerate(tshape))


def reduced_index(r, shape):
    """Where reduction node r stores the value for the current outer index."""
    axes = r.attrs["axis"]
    if r.attrs["keepdims"]:
        idx = ["0" if a in axes else f"i{a}" for a in range(len(shape))]
    else:
        idx = [f"i{a}" for a in range(len(shape)) if a not in axes]
    return ", ".join(idx) if idx else "()"


def acc_init(r):
    """Initial accumulator: -inf for max; 0 for sums, in float64 for floats
    because float32 running sums drift."""
    if r.op.name == "max":
        return typed_const(-math.inf, r.dtype) if r.dtype.kind == "f" else f"int64({np.iinfo(np.int64).min})"
    return "float64(0.0)" if r.dtype.kind == "f" else "int64(0)"


def accumulate(r, acc, x):
    """Lines (relative indentation, text) folding x into the accumulator."""
    if r.op.name == "max":  # keeps NaN, as np.max does
        return [(0, f"if {x} > {acc} or {x} != {x}:"), (1, f"{acc} = {x}")]
    return [(0, f"{acc} += {x}")]


def acc_final(r, acc):
    """The stored value of reduction r from its accumulator."""
    if r.op.name == "mean":
        count = " * ".join(dim_expr(r.inputs[0].shape[a]) for a in r.attrs["axis"]) or "1"
        return f"{r.dtype.name}({acc} / ({count}))"
    return f"{r.dtype.name}({acc})"


def view_chain(t):
    """t, then the views it is made of, down to the buffer they alias."""
    chain = [t]
    while t.op is not None and t.op.name in ("transpose", "reshape"):
        t = t.inputs[0]
        chain.append(t)
    return chain

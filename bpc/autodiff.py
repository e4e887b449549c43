"""Reverse-mode automatic differentiation as a graph-to-graph transformation.

`grad(cost, wrt)` walks the graph from the cost back to the leaves and
builds, for every node on a path to a `wrt` tensor, a new node holding the
gradient of the cost with respect to it, using each op's gradient rule.
The result is an ordinary graph: it can be printed, optimized, compiled,
and differentiated again (Hessian-vector products, gradient penalties).

Non-differentiable paths (comparisons, argmax, integer values, random
numbers, stop_gradient) contribute zero: a parameter reached only through
them gets a zero gradient, never an error.
"""
import numpy as np

from .errors import ShapeError
from .graph.tensor import Tensor, format_shape
from .graph.traverse import topo_sort
from . import ops
from .ops.scan import is_multi_output, parts_of, scan_out


def _zeros_like(t):
    return ops.broadcast_to(ops.lift(np.zeros((), dtype=t.dtype)), t.shape)


def grad(cost, wrt):
    """Symbolic gradients of the scalar `cost` with respect to each tensor in
    `wrt` (a tensor or a list). Returns tensors of the same shapes (a single
    tensor if `wrt` is a single tensor)."""
    single = isinstance(wrt, Tensor)
    wrt_list = [wrt] if single else list(wrt)
    if not isinstance(cost, Tensor):
        raise TypeError(f"grad: cost must be a bpc tensor, got {type(cost).__name__}")
    if cost.shape != ():
        raise ShapeError(f"grad: cost '{cost.name}' must be a scalar, its shape is "
                         f"{format_shape(cost.shape)} (reduce it with bpc.sum or bpc.mean)")
    if cost.dtype.kind != "f":
        raise ShapeError(f"grad: cost '{cost.name}' must be floating point, it is {cost.dtype.name}")
    for w in wrt_list:
        if not isinstance(w, Tensor):
            raise TypeError(f"grad: wrt must hold bpc tensors, got {type(w).__name__}")
        if w.dtype.kind != "f":
            raise ShapeError(f"grad: cannot differentiate with respect to '{w.name}', which is "
                             f"{w.dtype.name}; only floating-point tensors have gradients")

    return backprop([cost], [ops.lift(np.ones((), dtype=cost.dtype))], wrt_list, single)


def backprop(outputs, seeds, wrt, single=False):
    """The chain rule from `outputs` back to `wrt`: the gradient, with
    respect to each `wrt` tensor, of sum(output * seed) over the outputs
    (a vector-Jacobian product; seed None: that output contributes
    nothing). `grad` is backprop([cost], [1]); a scan's gradient runs it
    on the body of one step."""
    wrt_list = list(wrt)
    order = topo_sort(list(outputs) + list(wrt_list))
    # Only nodes that lie on a path from a wrt tensor to an output need a gradient.
    targets = {w.id for w in wrt_list}
    depends = set()
    for n in order:
        if n.id in targets or any(i.id in depends for i in n.inputs):
            depends.add(n.id)

    contributions = {}
    for o, seed in zip(outputs, seeds):
        if seed is not None:
            contributions.setdefault(o.id, []).append(seed)
    totals = {}
    for node in reversed(order):
        parts = contributions.pop(node.id, None)
        if is_multi_output(node):
            # A scan: its results (scan_out nodes, seen before it) carry the gradients.
            g_parts = [None if p is None else totals.get(p.id) for p in parts_of(node, order)]
            if all(g is None for g in g_parts):
                continue
            needed = [i.id in depends and i.dtype.kind == "f" for i in node.inputs]
            input_grads = node.op.grad(node, g_parts, needed)
        else:
            if not parts:
                continue
            g = parts[0]
            for p in parts[1:]:
                g = g + p  # fan-out: contributions add up
            totals[node.id] = g
            if node.op is None or node.op.grad is None or node.op is scan_out:
                continue
            input_grads = node.op.grad(node, g)
        for inp, gi in zip(node.inputs, input_grads):
            if gi is None or inp.id not in depends or inp.dtype.kind != "f":
                continue
            gi = ops.sum_to(gi, inp.shape)  # undo broadcasting
            if gi.dtype != inp.dtype:
                gi = ops.cast(gi, inp.dtype)
            contributions.setdefault(inp.id, []).append(gi)

    results = [totals[w.id] if w.id in totals else _zeros_like(w) for w in wrt_list]
    # The nodes built here are the derived ones: DOT and the text listing
    # show them apart from the forward graph.
    forward = {n.id for n in order}
    for n in topo_sort(results):
        if n.id not in forward:
            n.origin = "grad"
    for w, r in zip(wrt_list, results):
        assert r.shape == w.shape, (w, r)
    return results[0] if single else results

"""Graph-to-graph passes run before every target: constant folding, algebraic
simplification, common-subexpression elimination and dead-code elimination.

Each pass takes a list of root tensors (the outputs and update values of a
function) and returns the rebuilt roots; nodes that do not change are kept
as they are, so leaves (inputs, parameters) keep their identity.
"""
import numpy as np

from ..graph.tensor import constant, next_id
from ..graph.traverse import rebuild, topo_sort
from .. import ops
from ..ops.core import apply

FOLD_MAX_ELEMENTS = 4096


def copy_with(node, inputs):
    """The same op applied to new inputs, keeping the node's name, origin and
    source location (so errors and DOT still point at the user's code)."""
    if all(a is b for a, b in zip(inputs, node.inputs)):
        return node
    new = apply(node.op, inputs, node.attrs)
    _inherit(new, node)
    return new


def _inherit(new, old):
    new.name, new.where, new.origin, new.user_named = old.name, old.where, old.origin, old.user_named
    return new


def _const_value(t):
    return t._value if t.kind == "constant" else None


def _is_scalar_const(t, value):
    v = _const_value(t)
    return v is not None and v.size > 0 and bool(np.all(v == value))


# ----- dead code -------------------------------------------------------------------

def eliminate_dead_code(roots):
    """Keep only what the roots depend on. Graphs in bpc are defined by their
    roots, so this is reachability; it drops, for instance, forward values
    that only a discarded gradient branch used."""
    return list(roots)


# ----- constant folding --------------------------------------------------------------

def fold_constants(roots):
    """Evaluate ops whose inputs are all constants (small results only)."""
    def rewrite(node, inputs):
        node = copy_with(node, inputs) if node.op else node
        if (node.op is None or node.op.name in ("random_uniform", "size_of") or not inputs
                or not all(i.kind == "constant" for i in inputs) or None in node.shape
                or int(np.prod(node.shape)) > FOLD_MAX_ELEMENTS):
            return node
        value = node.op.numpy(node.attrs, node.shape, *(i._value for i in inputs))
        folded = constant(np.asarray(value, dtype=node.dtype), dtype=node.dtype)
        return _inherit(folded, node)
    return rebuild(roots, rewrite)[0]


# ----- algebraic simplification ----------------------------------------------------------

def _same(node, candidate):
    """A rewrite is valid only if it keeps the shape and dtype."""
    return candidate if (candidate.shape == node.shape and candidate.dtype == node.dtype) else None


def _rule(node, a):
    """One rewrite of `node` (already rebuilt, inputs `a`) or None."""
    name = node.op.name
    if name in ("add", "sub") and _is_scalar_const(a[1], 0):
        return _same(node, a[0])
    if name == "add" and _is_scalar_const(a[0], 0):
        return _same(node, a[1])
    if name == "mul" and _is_scalar_const(a[1], 1) or name == "div" and _is_scalar_const(a[1], 1):
        return _same(node, a[0])
    if name == "mul" and _is_scalar_const(a[0], 1):
        return _same(node, a[1])
    if name == "sub" and a[1].op is not None and a[1].op.name == "neg":
        return _same(node, ops.add(a[0], a[1].inputs[0]))
    if name == "add" and a[1].op is not None and a[1].op.name == "neg":
        return _same(node, ops.sub(a[0], a[1].inputs[0]))
    if name == "neg" and a[0].op is not None and a[0].op.name == "neg":
        return _same(node, a[0].inputs[0])
    if name == "stop_gradient":  # only matters while differentiating
        return a[0]
    if name == "pow" and a[1].kind == "constant" and a[1]._value.size == 1:
        e = float(a[1]._value.reshape(()))
        if e == 1.0:
            return _same(node, a[0])
        if e == 2.0:
            return _same(node, ops.square(a[0]))
        if e == 0.5:
            return _same(node, ops.sqrt(a[0]))
    if name == "transpose" and a[0].op is not None and a[0].op.name == "transpose":
        inner = a[0]
        perm = tuple(inner.attrs["axes"][p] for p in node.attrs["axes"])
        return _same(node, ops.transpose(inner.inputs[0], perm))
    if name == "reshape" and a[0].op is not None and a[0].op.name == "reshape":
        return _same(node, ops.reshape(a[0].inputs[0], node.shape))
    if name in ("reshape", "broadcast_to") and a[0].shape == node.shape:
        return _same(node, a[0])
    if name in ("sum", "mean", "max") and all(a[0].shape[ax] == 1 for ax in node.attrs["axis"]):
        return _same(node, ops.reshape(a[0], node.shape))
    return None


def simplify(roots):
    """Algebraic identities: x+0, x*1, x/1, --x, x**1, x**2 -> square,
    transpose of transpose, reshape of reshape, reductions over size-1 axes,
    no-op reshapes and broadcasts, and stop_gradient (which only matters to
    `grad`).

    Passes run after `bpc.grad`, so a rewrite here must never change what a
    value computes, only how: one that makes a value finite where the
    original is not (log(exp(x)), log(softmax)) would leave the gradients,
    derived from the original, NaN. Those are made when the node is built
    (see `bpc.log`), before `grad` sees the graph."""
    def rewrite(node, inputs):
        if node.op is None:
            return node
        node2 = copy_with(node, inputs)
        for _ in range(8):  # a rewrite can enable another at the same node
            if node2.op is None:
                break
            mark = next_id()
            new = _rule(node2, node2.inputs)
            if new is None or new is node2:
                break
            node2 = _inherit(new, node) if new.id >= mark else new
        return node2
    return rebuild(roots, rewrite)[0]


# ----- common subexpressions ------------------------------------------------------------

def _attr_key(attrs):
    return tuple(sorted((k, v if not isinstance(v, list) else tuple(v)) for k, v in attrs.items()))


def eliminate_common_subexpressions(roots):
    """Merge nodes computing the same op on the same inputs, and equal small
    constants. The backward graph recomputes much of the forward graph (the
    derivative of sigmoid reuses sigmoid(z)); this shares it."""
    seen = {}

    def rewrite(node, inputs):
        if node.kind == "constant" and node._value.size <= 64:
            key = ("const", node.dtype.str, node.shape, node._value.tobytes())
        elif node.op is not None and node.op.name != "random_uniform":
            key = (node.op.name, tuple(i.id for i in inputs), _attr_key(node.attrs))
        else:
            return node
        if key in seen:
            return seen[key]
        node = copy_with(node, inputs) if node.op is not None else node
        seen[key] = node
        return node
    return rebuild(roots, rewrite)[0]


PIPELINE = (("fold_constants", fold_constants), ("simplify", simplify),
            ("eliminate_common_subexpressions", eliminate_common_subexpressions),
            ("eliminate_dead_code", eliminate_dead_code))


def optimize(roots, passes=PIPELINE):
    """Run the passes in order (twice: a simplification can expose a common
    subexpression and the reverse). Returns (new roots, report) where the
    report lists node counts after each pass."""
    report = [("input", len(topo_sort(roots)))]
    for _ in range(2):
        for name, fn in passes:
            roots = fn(roots)
            report.append((name, len(topo_sort(roots))))
    return roots, report

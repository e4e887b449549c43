"""Graph-to-graph passes run before every target: constant folding, algebraic
simplification, common-subexpression elimination and dead-code elimination.

Each rewriting pass takes a list of root tensors (the outputs and update
values of a function) and returns the rebuilt roots; nodes that do not
change are kept as they are (the same objects), so leaves keep their
identity and "nothing changed" is "the same roots came back". `optimize`
runs them to a fixed point, then drops dead updates.
"""
import numpy as np

from ..graph.tensor import constant
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

def eliminate_dead_code(updates):
    """Drop updates that write nothing new: the new value is the param
    itself (`{W: W * 1.0}` after simplification, a frozen layer's
    `W - 0.0 * g` once folded). Returns the updates that remain.

    A program is the set of nodes its roots reach, so no unreachable node
    ever enters it (forward values that only a discarded gradient used are
    gone by construction); what can be dead is an effect, and an update
    that rewrites a value with itself is one: it costs a copy per step and
    keeps the param's old value alive for nothing."""
    return [(target, value) for target, value in updates if value is not target]


# ----- constant folding --------------------------------------------------------------

def fold_constants(roots):
    """Evaluate ops whose inputs are all constants (small results only)."""
    def rewrite(node, inputs):
        node = copy_with(node, inputs) if node.op else node
        if (node.op is None or not node.op.pure or not inputs
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
    existing = set()   # ids of the nodes of the rebuilt graph so far

    def rewrite(node, inputs):
        if node.op is None:
            existing.add(node.id)
            return node
        node2 = copy_with(node, inputs)
        for _ in range(MAX_REWRITES_PER_NODE):  # a rewrite can enable another at the same node
            if node2.op is None:
                break
            new = _rule(node2, node2.inputs)
            if new is None or new is node2:
                break
            # A node the rule built stands for `node`: it keeps its name and
            # line; a node that already existed (x in x * 1) keeps its own.
            node2 = new if new.id in existing else _inherit(new, node)
        else:
            raise AssertionError(f"simplify: rewrites of '{node.name}' do not terminate")
        existing.add(node2.id)
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
        elif node.op is not None and node.op.pure:
            key = (node.op, tuple(i.id for i in inputs), _attr_key(node.attrs))
        else:   # never merged, but reads the merged inputs
            return copy_with(node, inputs) if node.op is not None else node
        if key in seen:
            return seen[key]
        node = copy_with(node, inputs) if node.op is not None else node
        seen[key] = node
        return node
    return rebuild(roots, rewrite)[0]


# Guards against a rewrite system that cycles (a bug in a rule): far above
# what any graph needs (real graphs settle in one or two rounds).
MAX_REWRITES_PER_NODE = 1000
MAX_ROUNDS = 100

PIPELINE = (("fold_constants", fold_constants), ("simplify", simplify),
            ("eliminate_common_subexpressions", eliminate_common_subexpressions))


def optimize(outputs, updates=(), passes=PIPELINE):
    """Run the rewriting passes in order, round after round, until a round
    changes nothing (a fold can enable a simplification, which can expose a
    common subexpression, ...); then drop dead updates. Returns (outputs,
    updates, report), the report listing node counts after each pass."""
    outputs, updates = list(outputs), list(updates)
    roots = outputs + [v for _, v in updates]
    report = [("input", len(topo_sort(roots)))]
    for round_ in range(MAX_ROUNDS):
        before = roots
        for name, fn in passes:
            roots = fn(roots)
            report.append((name if not round_ else f"{name} (round {round_ + 1})", len(topo_sort(roots))))
        if all(a is b for a, b in zip(roots, before)):
            break
    else:
        raise AssertionError(f"optimize: no fixed point after {MAX_ROUNDS} rounds of {[n for n, _ in passes]}")
    outputs = roots[:len(outputs)]
    updates = eliminate_dead_code([(t, v) for (t, _), v in zip(updates, roots[len(outputs):])])
    report.append(("eliminate_dead_code", len(topo_sort(outputs + [v for _, v in updates]))))
    return outputs, updates, report

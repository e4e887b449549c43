"""The reference target: run the optimized graph op by op with NumPy.

Every compiled target is checked against it, and it is the "interpreted"
side of the benchmarks, so it takes no shortcut the compiled targets lack.
"""
import numpy as np

from ..graph.traverse import topo_sort
from ..ops.core import resolve


def evaluate(roots, feeds, batch, leaf_values=None, visit=None):
    """Values of `roots` given `feeds` (input node id -> array). `leaf_values`
    overrides param values (node id -> array); `visit(node, value)` sees each
    value as it is made and may stop the run by returning True."""
    env = {}
    leaf_values = leaf_values or {}
    for node in topo_sort(roots):
        if node.kind == "input":
            value = feeds[node.id]
        elif node.op is None:
            value = leaf_values.get(node.id)
            if value is None:
                value = node.value
        else:
            shape = resolve(node.shape, batch)
            value = node.op.numpy(node.attrs, shape, *(env[i.id] for i in node.inputs))
            if isinstance(value, tuple):   # a scan's results, taken by scan_out nodes
                env[node.id] = value
                continue
            value = np.asarray(value, dtype=node.dtype)
            if value.shape != shape:  # an op's NumPy rule disagrees with its shape rule
                raise AssertionError(f"{node.op.name} '{node.name}' produced shape {value.shape}, "
                                     f"expected {shape}")
        env[node.id] = value
        if visit is not None and visit(node, value):
            return node
    return [env[r.id] for r in roots]


class InterpretBackend:
    def __init__(self, program):
        self.program = program

    def __call__(self, arrays, batch):
        p = self.program
        feeds = {t.id: a for t, a in zip(p.inputs, arrays)}
        values = evaluate(p.roots, feeds, batch)
        n_out = len(p.outputs)
        outs = [np.array(v) for v in values[:n_out]]
        write(p.updates, values[n_out:])
        return outs


def write(updates, new_values):
    """Write every update after all were computed (simultaneous updates): a
    new value that shares memory with an updated leaf (`{A: B, B: A}`, a
    view of a param) is copied before any write."""
    from . import residency
    targets = [t._value for t, _ in updates]
    new_values = [np.array(v) if any(np.may_share_memory(v, a) for a in targets) else v
                  for v in new_values]
    for (target, _), new in zip(updates, new_values):
        np.copyto(target._value, new, casting="same_kind")
    residency.host_written([t for t, _ in updates])


def first_nonfinite(program, arrays, batch, leaf_values):
    """The first node (in execution order) whose value holds a NaN or Inf."""
    feeds = {t.id: a for t, a in zip(program.inputs, arrays)}

    def bad(node, value):
        return value.dtype.kind == "f" and not np.all(np.isfinite(value))
    with np.errstate(all="ignore"):  # the NaN is expected; it is what we are looking for
        found = evaluate(program.roots, feeds, batch, leaf_values, bad)
    return None if isinstance(found, list) else found

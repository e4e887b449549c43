"""`check_grad`: compare `bpc.grad` with central finite differences.

The graph is rebuilt in float64 (inputs and params become float64 inputs),
so the comparison measures the gradient rules, not float32 rounding.
"""
from dataclasses import dataclass

import numpy as np

from .autodiff import grad
from .graph.tensor import Tensor, input as make_input
from .graph.traverse import rebuild, topo_sort
from .backends.interpret import evaluate


@dataclass
class GradCheck:
    """Worst relative error per checked tensor: |analytic - numeric| /
    max(1, |analytic|, |numeric|), over the checked elements."""
    errors: dict
    tol: float

    @property
    def worst(self):
        return max(self.errors.values()) if self.errors else 0.0

    @property
    def ok(self):
        return self.worst <= self.tol

    def __str__(self):
        rows = [f"  {name}: {err:.2e}" for name, err in self.errors.items()]
        return (f"gradient check {'passed' if self.ok else 'FAILED'} (tol {self.tol:.0e}), "
                "worst relative error:\n" + "\n".join(rows))


def _to_float64(cost, leaves):
    """Rebuild `cost` with every float leaf in `leaves` as a float64 input and
    every other float node computed in float64."""
    leaf_map = {}
    for t in leaves:
        dt = np.float64 if t.dtype.kind == "f" else t.dtype
        leaf_map[t.id] = make_input(t.name if t.name.isidentifier() else f"leaf{t.id}", t.shape, dt)

    def rewrite(node, inputs):
        if node.id in leaf_map:
            return leaf_map[node.id]
        if node.op is None:
            if node.kind == "constant" and node.dtype.kind == "f":
                from .graph.tensor import constant
                return constant(node._value, dtype=np.float64)
            return node
        attrs = dict(node.attrs)
        if "dtype" in attrs and np.dtype(attrs["dtype"]).kind == "f":   # casts, random numbers
            attrs["dtype"] = "float64"
        from .ops.core import apply
        new = apply(node.op, inputs, attrs)
        return new
    (cost64,), _ = rebuild([cost], rewrite)
    return cost64, leaf_map


def check_grad(cost, wrt, feed, eps=1e-6, tol=1e-5, max_elements=24, seed=0):
    """Check `bpc.grad(cost, wrt)` against central finite differences.

    feed: {input tensor or name: array} for the inputs the cost needs.
    wrt:  tensors (params or float inputs) to check; params use their
          current value. At most `max_elements` randomly chosen elements of
          each are perturbed. Returns a `GradCheck` (use `.ok`, print it)."""
    wrt = [wrt] if isinstance(wrt, Tensor) else list(wrt)
    order = topo_sort([cost])
    by_name = {n.name: n for n in order if n.kind == "input"}
    values = {}
    for k, v in feed.items():
        node = by_name.get(k) if isinstance(k, str) else k
        if node is None:
            raise KeyError(f"check_grad: the cost has no input named {k!r}")
        values[node.id] = np.asarray(v)
    leaves = [n for n in order if n.kind in ("input", "param", "state")]
    for w in wrt:
        if w.id not in {n.id for n in leaves}:
            raise ValueError(f"check_grad: '{w.name}' is not a leaf the cost depends on")
    missing = [n.name for n in leaves if n.kind == "input" and n.id not in values]
    if missing:
        raise KeyError(f"check_grad: feed is missing {missing}")
    for n in leaves:
        if n.kind != "input":
            values[n.id] = np.asarray(n.value)
    cost64, leaf_map = _to_float64(cost, leaves)
    grads64 = grad(cost64, [leaf_map[w.id] for w in wrt])

    feeds = {leaf_map[i]: np.array(v, dtype=leaf_map[i].dtype) for i, v in values.items()}
    batch = 1
    for t, v in feeds.items():
        if None in t.shape:
            batch = v.shape[t.shape.index(None)]

    def run(roots):
        return evaluate(roots, {t.id: v for t, v in feeds.items()}, batch)

    analytic = run(grads64)
    rng = np.random.default_rng(seed)
    errors = {}
    for w, g in zip(wrt, analytic):
        x = feeds[leaf_map[w.id]]
        flat = x.reshape(-1)
        picks = np.arange(flat.size) if flat.size <= max_elements else rng.choice(flat.size, max_elements, replace=False)
        worst = 0.0
        for idx in picks:
            old = flat[idx]
            flat[idx] = old + eps
            up = float(run([cost64])[0])
            flat[idx] = old - eps
            down = float(run([cost64])[0])
            flat[idx] = old
            numeric = (up - down) / (2 * eps)
            a = float(g.reshape(-1)[idx])
            err = abs(a - numeric) / max(1.0, abs(a), abs(numeric))
            worst = max(worst, err) if np.isfinite(err) else np.inf
        errors[w.name] = worst
    return GradCheck(errors, tol)

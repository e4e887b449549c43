"""`bpc.scan`: a loop over time as one node of the graph.

`scan(step, init, xs)` traces `step(carry, x_t) -> (carry, y_t)` once, over
placeholders of one time step: the result is a `Body`, a small graph of its
own. Values the step reads from outside (weights, a projected input) become
the body's *closures*: the scan node takes them as inputs, so the outer graph
computes them once and gradients reach them through the scan.

The scan node has several results (the stacked carries, the stacked outputs,
the gradients a backward scan accumulates), each taken by a `scan_out` node:
  * carries, stacked time-major: (T + 1, *carry shape); entry 0 is the
    initial carry of a forward scan (entry T of a reverse one), entry t + 1
    the carry after step t (entry t, reverse);
  * outputs y_t, stacked time-major: (T, *y shape);
  * accumulators (backward scans only): one per body update `A <- A + dA`,
    the sum over all steps, starting from zero.
The compiled targets run the body's kernels once per step, reading and
writing the stacks in place (each step's slice of a time-major stack is one
contiguous block), so the body compiles once whatever T is.

The gradient of a scan is a reverse scan whose body is the chain rule of
the forward body (`autodiff.backprop` of it), reading what the forward scan
stacked: the carries, the outputs, and the values of the step that the
chain rule reads (an LSTM's gates: found when the scan is built, and
stacked as extra outputs), so the backward step computes none of the
forward step again; the closures' gradients are its accumulators. A
closure that a product reads transposed (h @ W_hhᵀ) is transposed once
before the loop, and its gradient summed in the weight's own layout.
"""
import numpy as np

from ..errors import ShapeError
from ..graph.tensor import Tensor, format_shape, input as placeholder
from ..graph.traverse import rebuild, topo_sort
from .core import Op, checking, lift
from .structural import transpose

# ----- materialize: a value in a buffer of its own ---------------------------------------

# A scan reads its inputs as whole, C-ordered buffers: a transposed view (the
# time-major stack of batch-major sequences), a broadcast constant (a zero
# initial carry) is first written out by this identity. Never folded or
# merged by the passes (not pure), so the buffer exists on every target.
materialize = Op("materialize", "elementwise", lambda inputs, attrs: (inputs[0].shape, inputs[0].dtype),
                 lambda attrs, shape, x: np.array(np.broadcast_to(x, shape)), lambda n, g: (g,),
                 lambda k, a: a, pure=False,
                 doc="The value of its input, written to a buffer of its own.")


def _needs_buffer(t):
    """Whether t has no storage of its own that a kernel can read whole: a
    scan reads inputs, params, state, constants other than scalars (which
    code inlines), and results of other scans or materializations."""
    if t.op is None:
        return t.kind == "constant" and t.shape == ()
    return t.op is not materialize and t.op.name != "scan_out"


# ----- the body ------------------------------------------------------------------------

class Body:
    """One step of a scan: placeholders for the carries, the inputs x_t and
    the closures, and the nodes of the new carries, the outputs y_t and the
    accumulator updates (state leaf, new value). The last `saved` outputs
    are no output of the user's step: values its gradient needs (the
    gates of an LSTM), stacked by the forward scan so that the backward
    scan reads them instead of computing them again."""

    def __init__(self, carry_in, xs_in, closures_in, carry_out, ys, accumulate=(), saved=0):
        self.carry_in, self.xs_in, self.closures_in = list(carry_in), list(xs_in), list(closures_in)
        self.carry_out, self.ys = list(carry_out), list(ys)
        self.accumulate = list(accumulate)
        self.saved = saved

    @property
    def inputs(self):
        return self.carry_in + self.xs_in + self.closures_in

    @property
    def outputs(self):
        return self.carry_out + self.ys

    @property
    def roots(self):
        return self.outputs + [v for _, v in self.accumulate]

    def clone(self):
        """The same body over fresh placeholders and fresh op nodes (two
        programs never share a node): returns (body, {old node id: new node})."""
        fresh = {p.id: placeholder(p.name, p.shape, p.dtype) for p in self.inputs}

        def copy(n, inputs):
            if n.id in fresh:
                return fresh[n.id]
            return n if n.op is None else _copy_node(n, inputs, always=True)
        new_roots, mapping = rebuild(self.roots, copy)
        mapping.update({pid: p for pid, p in fresh.items() if pid not in mapping})
        k, n_out = len(self.carry_out), len(self.outputs)
        acc = [(a, v) for (a, _), v in zip(self.accumulate, new_roots[n_out:])]
        body = Body(*([mapping[p.id] for p in group] for group in (self.carry_in, self.xs_in, self.closures_in)),
                    new_roots[:k], new_roots[k:n_out], acc, saved=self.saved)
        return body, mapping



def _copy_node(n, inputs, always=False):
    if n.op is None or not always and all(a is b for a, b in zip(inputs, n.inputs)):
        return n
    new = Tensor("op", n.shape, n.dtype, name=n.name, op=n.op, inputs=inputs, attrs=n.attrs, where=n.where)
    new.origin = n.origin
    return new


def _hoist(outputs, placeholders):
    """Replace what the step reads from outside (values that do not depend
    on its placeholders) by new placeholders: returns (new outputs,
    [(outer value, placeholder)]). Scalar constants stay inside (code
    inlines them); a view of a leaf stays inside over the leaf's
    placeholder (views are free, and the leaf needs no copy)."""
    ph = {p.id for p in placeholders}
    variant = set(ph)
    for n in topo_sort(outputs):
        if any(i.id in variant for i in n.inputs):
            variant.add(n.id)
    frontier = [o for o in outputs if o.id not in variant]
    for n in topo_sort(outputs):
        if n.id in variant and n.id not in ph:
            frontier.extend(i for i in n.inputs if i.id not in variant)
    inside, read = set(), {}
    for t in frontier:
        base = t
        while base.op is not None and base.op.is_view:
            base = base.inputs[0]
        if base.op is None and base is not t:   # a view of a leaf
            v = t
            while v is not base:
                inside.add(v.id)
                v = v.inputs[0]
            t = base
        if not (t.kind == "constant" and t.shape == ()):
            read.setdefault(t.id, t)
    closures = {tid: (t, placeholder(f"closure{m}", t.shape, t.dtype)) for m, (tid, t) in enumerate(read.items())}

    def rewrite(n, inputs):
        if n.id in ph:
            return n
        if n.id in closures:
            return closures[n.id][1]
        if n.id in variant or n.id in inside:
            return _copy_node(n, inputs)
        return n
    new_outs, _ = rebuild(outputs, rewrite)
    return new_outs, list(closures.values())


def _transposed_closures(roots, closures, keep=False):
    """A product in the step that reads a closure transposed (h @ W_hhᵀ in
    PyTorch's layout, or the backward of x @ W) reads a copy transposed once
    before the loop instead: a contiguous operand, where BLAS's product with
    a transposed small operand was ~1.5x slower, T times. `closures`: [(outer
    value, placeholder)]; returns (new roots, closures with the copies
    added after them, and unless `keep`, those no longer read dropped)."""
    from .structural import _matmul
    index = {ph.id: outer for outer, ph in closures}
    users = {}
    for n in topo_sort(roots):
        for i in n.inputs:
            users.setdefault(i.id, []).append(n)
    swapped = {}
    for n in topo_sort(roots):
        if (n.op is not None and n.op.name == "transpose" and n.ndim >= 2 and n.inputs[0].id in index
                and n.attrs["axes"] == tuple(range(n.ndim - 2)) + (n.ndim - 1, n.ndim - 2)
                and all(u.op is _matmul for u in users.get(n.id, ()))):
            outer = materialize(transpose(index[n.inputs[0].id], n.attrs["axes"]))
            swapped[n.id] = (outer, placeholder(f"{n.inputs[0].name}_t", n.shape, n.dtype))
    if not swapped:
        return roots, closures
    new_roots, _ = rebuild(roots, lambda n, ins: swapped[n.id][1] if n.id in swapped else _copy_node(n, ins))
    read = {n.id for n in topo_sort(new_roots)}
    return new_roots, [c for c in closures if keep or c[1].id in read] + list(swapped.values())


# ----- the ops ----------------------------------------------------------------------------

def _scan_infer(inputs, attrs):
    return (), np.dtype("float32")   # the node stands for its results, taken by scan_out


def _scan_numpy(attrs, shape, *arrays):
    """The reference: the body run by the interpreter, step by step."""
    from ..backends.interpret import evaluate
    body, T, reverse = attrs["body"], attrs["length"], attrs["reverse"]
    K, J = len(body.carry_in), len(body.xs_in)
    inits, xs, zs = arrays[:K], arrays[K:K + J], arrays[K + J:]
    batch = _batch_size(body.inputs, arrays)
    stacks = [np.empty(_resolve(s, batch), dtype=d) for s, d in attrs["outputs"][:K]]
    for h, c in zip(stacks, inits):
        h[T if reverse else 0] = c
    ys = [np.empty(_resolve(s, batch), dtype=d) for s, d in attrs["outputs"][K:K + len(body.ys)]]
    acc = {a.id: np.zeros(_resolve(a.shape, batch), dtype=a.dtype) for a, _ in body.accumulate}
    for i in range(T):
        t = T - 1 - i if reverse else i
        feeds = {p.id: h[t + 1 if reverse else t] for p, h in zip(body.carry_in, stacks)}
        feeds.update({p.id: x[t + s] for p, x, s in zip(body.xs_in, xs, attrs["shifts"])})
        feeds.update({p.id: z for p, z in zip(body.closures_in, zs)})
        values = evaluate(body.roots, feeds, batch, leaf_values=acc)
        for h, v in zip(stacks, values[:K]):
            h[t if reverse else t + 1] = v
        for y, v in zip(ys, values[K:K + len(ys)]):
            y[t] = v
        for (a, _), v in zip(body.accumulate, values[len(body.outputs):]):
            acc[a.id] = np.array(v)
    return tuple(stacks + ys + [acc[a.id] for a, _ in body.accumulate])


def _batch_size(placeholders, arrays):
    for p, a in zip(placeholders, arrays):
        a = np.asarray(a)
        for axis, d in enumerate(p.shape):
            if d is None:
                return a.shape[axis + (a.ndim - len(p.shape))]
    return 1


def _resolve(shape, batch):
    return tuple(batch if d is None else d for d in shape)


# A multi-result node: autodiff calls its gradient rule with the gradients of
# its results and which inputs need one (`autodiff.backprop`).
_scan = Op("scan", "other", _scan_infer, _scan_numpy, lambda node, g_parts, needed: _backward_scan(node, g_parts, needed),
           kernel="scan", pure=False,
           doc="A loop over time; its results are taken by scan_out.")


def _out_infer(inputs, attrs):
    (s,) = inputs
    shape, dtype = s.attrs["outputs"][attrs["index"]]
    return shape, dtype


scan_out = Op("scan_out", "other", _out_infer, lambda attrs, shape, results: results[attrs["index"]],
              kernel="scan_out", doc="Result `index` of a scan node.")


def merge_scan_results(roots):
    """The graph of `roots` with one scan_out node per (scan, index): a
    scan's result taken twice (the forward graph's and its gradient's) is
    one node. Nodes that do not change keep their identity."""
    seen = {}

    def rewrite(n, inputs):
        n = _copy_node(n, inputs)
        if n.op is scan_out:
            return seen.setdefault((n.inputs[0].id, n.attrs["index"]), n)
        return n
    return rebuild(roots, rewrite)[0]


def is_multi_output(n):
    return n.op is _scan


def parts_of(node, order):
    """The scan_out nodes of a scan node among `order`, by index (None where absent)."""
    parts = [None] * len(node.attrs["outputs"])
    for n in order:
        if n.op is scan_out and n.inputs[0] is node:
            parts[n.attrs["index"]] = n
    return parts


def _make_scan(body, inits, xs, closures, length, reverse, shifts):
    outputs = tuple([((length + 1,) + c.shape, c.dtype) for c in body.carry_in]
                    + [((length,) + y.shape, y.dtype) for y in body.ys]
                    + [(a.shape, a.dtype) for a, _ in body.accumulate])
    s = _scan(*inits, *xs, *closures, body=body, length=length, reverse=bool(reverse), shifts=tuple(shifts),
              outputs=outputs)
    return s, [scan_out(s, index=i) for i in range(len(outputs))]


# ----- the public function --------------------------------------------------------------

def _flatten(obj):
    """(list of tensors, rebuild function) of a tensor, tuple/list of tensors, or None."""
    if obj is None:
        return [], lambda items: None
    if isinstance(obj, (tuple, list)):
        kind = type(obj)
        return list(obj), lambda items: kind(items)
    return [obj], lambda items: items[0]


def scan(step, init, xs=None, axis=1, length=None, reverse=False):
    """Run `step(carry, x_t) -> (carry, y_t)` over time, as one loop.

    init: the initial carry: a tensor, or a tuple/list of tensors (numbers
    are lifted). xs: the sequences (a tensor, a tuple/list of tensors, or
    None with `length`), time along `axis` (default 1: batch-major
    (N, T, ...) sequences). `step` is called once, on placeholders of one
    time step, and must return the new carry (same structure, shapes and
    dtypes as `init`) and y_t (a tensor, a tuple of tensors, or None). With
    `reverse=True` the steps run from the last to the first.

    Returns (final carry, ys), ys stacked along `axis` in time order.
    """
    if not callable(step):
        raise TypeError(f"scan: step must be a function step(carry, x_t) -> (carry, y_t), got {step!r}")
    carries, carry_struct = _flatten(init)
    seqs, seq_struct = _flatten(xs)
    with checking("scan", *[c for c in carries if isinstance(c, Tensor)],
                  *[x for x in seqs if isinstance(x, Tensor)]):
        carries = [lift(c) for c in carries]
        seqs = [lift(x) for x in seqs]
        if not carries:
            raise ShapeError("init must hold at least one tensor (the carry)")
        T = length
        for j, x in enumerate(seqs):
            if not -x.ndim <= axis < x.ndim:
                raise ShapeError(f"xs[{j}] of shape {format_shape(x.shape)} has no axis {axis}")
            d = x.shape[axis % x.ndim]
            if d is None:
                raise ShapeError(f"the time axis ({axis}) of xs[{j}] is the batch dimension (None); "
                                 f"sequences are (N, T, ...) with axis=1, or (T, N, ...) with axis=0")
            if T is not None and d != T:
                raise ShapeError(f"xs[{j}] has {d} steps along axis {axis}, expected {T}"
                                 + (" (length)" if length is not None and j == 0 else ""))
            T = d
        if T is None:
            raise ShapeError("without xs, scan needs length (the number of steps)")
        if not isinstance(T, (int, np.integer)) or T < 1:
            raise ShapeError(f"length must be a positive int, got {T!r}")
        T = int(T)
    carry_ph = [placeholder(f"carry{k}", c.shape, c.dtype) for k, c in enumerate(carries)]
    xs_ph = [placeholder(f"x{j}", x.shape[:axis % x.ndim] + x.shape[axis % x.ndim + 1:], x.dtype)
             for j, x in enumerate(seqs)]
    result = step(carry_struct(carry_ph), seq_struct(xs_ph))
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ShapeError(f"scan: step must return (new carry, y_t), a pair; it returned {type(result).__name__}"
                         f" [step defined at {_where(step)}]")
    new_carry, y = result
    new_carries, _ = _flatten(new_carry)
    ys, y_struct = _flatten(y)
    if len(new_carries) != len(carries):
        raise ShapeError(f"scan: step returned {len(new_carries)} carries, init has {len(carries)} "
                         f"[step defined at {_where(step)}]")
    new_carries = [lift(c, like=p) for c, p in zip(new_carries, carry_ph)]
    ys = [lift(v) for v in ys]
    for k, (c, p) in enumerate(zip(new_carries, carry_ph)):
        if c.shape != p.shape or c.dtype != p.dtype:
            raise ShapeError(f"scan: the carry must keep its shape and dtype: carry {k} is "
                             f"{p.dtype.name}{format_shape(p.shape)}, step returned "
                             f"{c.dtype.name}{format_shape(c.shape)} [step defined at {_where(step)}]")
    outs, closures = _hoist(new_carries + ys, carry_ph + xs_ph)
    outs, closures = _transposed_closures(outs, closures)
    body = Body(carry_ph, xs_ph, [ph for _, ph in closures], outs[:len(carries)], outs[len(carries):])
    saved = _saved_values(body)
    body = Body(body.carry_in, body.xs_in, body.closures_in, body.carry_out, body.ys + saved, saved=len(saved))
    perm = lambda x: (axis % x.ndim,) + tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    stacks = [materialize(transpose(x, perm(x))) for x in seqs]
    inits = [materialize(c) if _needs_buffer(c) else c for c in carries]
    outer = [materialize(t) if _needs_buffer(t) else t for t, _ in closures]
    _, parts = _make_scan(body, inits, stacks, outer, T, reverse, [0] * len(seqs))
    K = len(carries)
    final = [p[0 if reverse else T] for p in parts[:K]]
    back = lambda y: transpose(y, tuple(range(1, axis % y.ndim + 1)) + (0,) + tuple(range(axis % y.ndim + 1, y.ndim)))
    return carry_struct(final), y_struct([back(p) for p in parts[K:K + len(ys)]])


def _where(fn):
    import inspect
    try:
        return f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (TypeError, OSError):
        return repr(fn)


# ----- the gradient: a reverse scan ---------------------------------------------------------

def _chain_rule(fwd, seeds, wrt):
    """backprop over a (cloned) forward step; also returns the values of
    the forward step that the derived nodes read (the frontier): the bases
    of views, leaving out leaves, placeholders and values that do not
    change from step to step (computed from closures alone)."""
    from ..autodiff import backprop
    grads = backprop(fwd.outputs, seeds, wrt)
    forward = {n.id for n in topo_sort(fwd.roots)}
    varies = {p.id for p in fwd.carry_in + fwd.xs_in}
    for n in topo_sort(fwd.roots):
        if any(i.id in varies for i in n.inputs):
            varies.add(n.id)
    frontier = {}
    for n in topo_sort(grads):
        if n.id in forward:
            continue
        for i in n.inputs:
            if i.id not in forward:
                continue
            while i.op is not None and i.op.is_view:
                i = i.inputs[0]
            # (a scan inside the step is computed again: its results are its parts)
            if i.op is not None and i.id in varies and not is_multi_output(i):
                frontier.setdefault(i.id, i)
    return grads, list(frontier.values())


def _saved_values(body):
    """The forward step's values its gradient reads that the step does not
    already output (the residuals the forward scan stacks)."""
    fwd, mapping = body.clone()
    seeds = [placeholder(f"seed{k}", o.shape, o.dtype) for k, o in enumerate(fwd.outputs)]
    wrt = [p for p in fwd.carry_in + fwd.xs_in + fwd.closures_in if p.dtype.kind == "f"]
    _, frontier = _chain_rule(fwd, seeds, wrt)
    original = {new.id: old for old, new in ((body_node, mapping[body_node.id])
                                            for body_node in topo_sort(body.roots))}
    outputs = {o.id for o in fwd.outputs}
    return [original[n.id] for n in frontier if n.id not in outputs]


def _is_transposed_copy(z):
    """Whether z is a matrix transposed and copied before the loop
    (`_transposed_closures`)."""
    return (z.op is materialize and z.ndim == 2 and z.inputs[0].op is not None
            and z.inputs[0].op.name == "transpose" and z.inputs[0].attrs["axes"] == (1, 0))


def _transposed(g):
    """gᵀ, as the product of the transposes where g is a product."""
    from .structural import _product_transposed
    flipped = _product_transposed(g)
    return flipped if flipped is not None else transpose(g)


def _backward_scan(node, g_parts, needed):
    """Gradients of a scan's inputs (inits, xs, closures) given those of its
    results (None: no gradient flows from that result); `needed` says which
    inputs want one (the others get None, and the backward step does not
    compute them). The backward step reads what the forward step saved
    (its carries, outputs and residuals) instead of computing it again."""
    from .structural import broadcast_to
    body, T, reverse = node.attrs["body"], node.attrs["length"], node.attrs["reverse"]
    if body.accumulate or any(node.attrs["shifts"]):
        raise ShapeError("gradients of a backward scan (second-order gradients through bpc.scan) "
                         "are not supported")
    K, J, L = len(body.carry_in), len(body.xs_in), len(body.ys) - body.saved
    xs, zs = node.inputs[K:K + J], node.inputs[K + J:]
    parts = [scan_out(node, index=i) for i in range(len(node.attrs["outputs"]))]
    g_stacks, g_ys = g_parts[:K], g_parts[K:K + L]
    fwd, _ = body.clone()
    # Placeholders of the backward step: the gradient carried back to the
    # carries, and per step the direct gradients of the stacked carries and ys.
    g_carry = [placeholder(f"g_carry{k}", c.shape, c.dtype) for k, c in enumerate(fwd.carry_in)]
    g_h = [placeholder(f"g_h{k}", c.shape, c.dtype) if g is not None else None
           for k, (c, g) in enumerate(zip(fwd.carry_in, g_stacks))]
    g_y = [placeholder(f"g_y{l}", y.shape, y.dtype) if g is not None else None
           for l, (y, g) in enumerate(zip(fwd.ys[:L], g_ys))]
    seeds = [gc if gh is None else gc + gh for gc, gh in zip(g_carry, g_h)] + g_y + [None] * body.saved
    wrt_x = [j for j, x in enumerate(fwd.xs_in) if x.dtype.kind == "f" and needed[K + j]]
    wrt_z = [m for m, z in enumerate(fwd.closures_in) if z.dtype.kind == "f" and needed[K + J + m]]
    grads, frontier = _chain_rule(fwd, seeds, fwd.carry_in + [fwd.xs_in[j] for j in wrt_x]
                                  + [fwd.closures_in[m] for m in wrt_z])
    # Step t of the forward scan read carry entry t (t + 1, reverse) and
    # wrote entry t + 1 (t): the backward step t reads the same entries.
    read, wrote = (1, 0) if reverse else (0, 1)
    # Forward values the derived nodes read: taken from the stacks the
    # forward scan wrote (new carries, outputs, saved values), not computed.
    sources = {}
    for k, c in enumerate(fwd.carry_out):
        sources.setdefault(c.id, (parts[k], wrote))
    for l, y in enumerate(fwd.ys):
        sources.setdefault(y.id, (parts[K + l], 0))
    reads, stand_in = [], {}
    for n in frontier:
        if n.id in sources:
            stand_in[n.id] = placeholder(f"saved{len(reads)}", n.shape, n.dtype)
            reads.append((stand_in[n.id], sources[n.id]))
    grads, _ = rebuild(grads, lambda n, ins: stand_in[n.id] if n.id in stand_in else _copy_node(n, ins))
    # Products of the derived step that read a closure transposed (dh = g @ W)
    # read a copy transposed before the loop; the forward's closures stay.
    grads, closures = _transposed_closures(grads, list(zip(zs, fwd.closures_in)), keep=True)
    extra = closures[len(zs):]
    g_cin, g_x, g_z = grads[:K], grads[K:K + len(wrt_x)], grads[K + len(wrt_x):]
    # A closure that is a weight transposed before the loop (W_hhᵀ) sums its
    # gradient in the weight's own layout (gᵀ h rather than (hᵀ g)ᵀ), so the
    # weight's update reads it in order.
    flip = [_is_transposed_copy(zs[m]) for m in wrt_z]
    accumulators = [Tensor("state", fwd.closures_in[m].shape[::-1] if f else fwd.closures_in[m].shape,
                           fwd.closures_in[m].dtype, name=f"grad_sum{m}") for m, f in zip(wrt_z, flip)]
    g_z = [_transposed(g) if f else g for g, f in zip(g_z, flip)]
    extra_xs = [g for g in g_h if g is not None] + [g for g in g_y if g is not None]
    bwd = Body(g_carry, fwd.carry_in + fwd.xs_in + extra_xs + [p for p, _ in reads],
               fwd.closures_in + [ph for _, ph in extra], g_cin, g_x, [(a, a + g) for a, g in zip(accumulators, g_z)])
    stacked_gh = [g for g in g_stacks if g is not None]
    shifts = ([read] * K + [0] * J + [wrote] * len(stacked_gh) + [0] * len([g for g in g_y if g is not None])
              + [shift for _, (_, shift) in reads])
    zero_init = [materialize(broadcast_to(lift(np.zeros((), c.dtype)), c.shape)) for c in fwd.carry_in]
    seqs = (parts[:K] + list(xs) + [materialize(g) if _needs_buffer(g) else g
                                    for g in stacked_gh + [g for g in g_ys if g is not None]]
            + [stack for _, (stack, _) in reads])
    _, bparts = _make_scan(bwd, zero_init, seqs, list(zs) + [outer for outer, _ in extra], T, not reverse, shifts)
    out = []
    for k in range(K):   # the gradient reaching the initial carry, plus that of its stack entry
        if not needed[k]:
            out.append(None)
            continue
        g = bparts[k][T if reverse else 0]
        if g_stacks[k] is not None:
            g = g + g_stacks[k][T if reverse else 0]
        out.append(g)
    g_xs = [None] * J
    for j, gx in zip(wrt_x, bparts[K:K + len(wrt_x)]):
        g_xs[j] = gx
    g_zs = [None] * len(zs)
    for m, acc, f in zip(wrt_z, bparts[K + len(wrt_x):], flip):
        g_zs[m] = transpose(acc) if f else acc
    return tuple(out + g_xs + g_zs)



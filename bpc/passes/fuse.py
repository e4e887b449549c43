"""Fusion and scheduling: from an optimized graph to a list of kernels.

Shared by the code generators (CPU and CUDA), which only decide how each
kernel is written, never what it contains:

* `loop` kernels: a maximal set of elementwise nodes over one iteration
  shape, optionally ending in reductions over one set of axes (the bias
  gradient's column sum, a softmax row sum). Inputs of other shapes are read
  with broadcast indexing; members used outside the kernel are stored.
* every other op runs in a kernel of its own, of the form its `Op.kernel`
  names: `matmul` (a BLAS call; transposed operands are passed as views;
  a batched product summed over batch axes by its only reader, as a
  weight's gradient is, accumulates into that sum),
  `view` (transpose and reshape, which alias their input's buffer),
  `random`, `size_of`, `argmax` (small dedicated loops), ...; a target
  without an emitter for a form says so when it compiles.

Then: kernels are ordered (updates written in place into the parameter when
nothing later reads its old value), and buffers are assigned so that
intermediates whose lifetimes do not overlap share memory.
"""
from dataclasses import dataclass, field

from ..errors import CompileError
from ..graph.traverse import topo_sort, consumers
from ..ops.scan import is_multi_output, materialize, parts_of, scan_out

# Numba's compile time grows faster than a function's size: a loop body of
# 90 nodes with 30 reductions took 1.6 s, 200 such reductions ~20 s. Longer
# chains are split into kernels of this size (their boundary values go
# through a buffer); identical pieces then share one compiled kernel.
MAX_KERNEL_NODES = 64
MAX_KERNEL_REDUCTIONS = 8



@dataclass
class Kernel:
    form: str                       # loop, or the op's `kernel` (matmul | view | random | ...)
    nodes: list                     # members in execution order
    shape: tuple = ()               # iteration shape (loop kernels)
    axes: tuple = ()                # reduced axes (loop kernels with reductions)
    stores: list = field(default_factory=list)   # members whose values leave the kernel
    reads: list = field(default_factory=list)    # nodes read from outside
    name: str = ""
    body: object = None             # scan kernels: their `Step`
    update: tuple = None            # matmul kernels: (param's new value, alpha) when the product
    #                                 is added into the param in place (p = alpha * A @ B + p)

    @property
    def node(self):
        return self.nodes[0]

    def describe(self):
        ops = ", ".join(n.op.name for n in self.nodes)
        return f"{self.name}: {self.form} [{ops}]"


@dataclass
class Plan:
    kernels: list
    roots: list                     # program outputs and update values
    in_place: dict                  # update-value node id -> param written directly
    copies: list                    # (param, node) written after everything else
    buffers: dict                   # node id -> buffer index (materialized intermediates)
    buffer_specs: list              # buffer index -> (symbolic shape, dtype)
    inline: dict                    # node id -> scalar constant value inlined into code
    snapshots: dict = field(default_factory=dict)   # copied value id -> (value, buffer saving it first)

    def kernel_of(self):
        """node id -> kernel name, for drawing fused kernels."""
        return {n.id: k.name for k in self.kernels for n in k.nodes}


def is_loop_node(n):
    """Whether n is fused into loop nests (elementwise ops and reductions
    without a kernel of their own)."""
    return n.op is not None and n.op.kernel is None


class _Groups:
    """Union-find over loop groups, with the groups each node and each group
    depends on, to keep the kernel graph acyclic.

    Dependencies are recorded when a node is placed and may go stale: when
    two groups merge, whatever depended on one now also depends on what
    the other reads. So a question "does X depend on group g" is answered
    by a walk over the current groups (`reach`), never by a stored set."""

    def __init__(self):
        self.parent = []
        self.shape, self.axes, self.members = [], [], []
        self.reads = []      # group -> raw group ids its members' outside inputs depend on
        self.group_of = {}   # node id -> group (raw id, resolve with find)
        self.deps = {}       # node id -> raw group ids it depends on when placed (incl. its own)

    def find(self, g):
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def new(self, shape, axes):
        self.parent.append(len(self.parent))
        self.shape.append(shape)
        self.axes.append(axes)
        self.members.append([])
        self.reads.append(set())
        return len(self.parent) - 1

    def reach(self, raw):
        """Every current group that something depending on the raw group ids
        `raw` depends on, transitively."""
        seen, stack = set(), [self.find(g) for g in raw]
        while stack:
            g = stack.pop()
            if g not in seen:
                seen.add(g)
                stack.extend(self.find(h) for h in self.reads[g])
        return seen

    def legal(self, cands, n):
        """Can the groups `cands` and node n form one kernel: small enough to
        compile quickly, and without a cycle? A cycle exists iff some input
        read from outside depends on them."""
        members = [m for c in cands for m in self.members[c]] + [n]
        if len(members) > MAX_KERNEL_NODES or \
                sum(m.op.iteration == "reduce" for m in members) > MAX_KERNEL_REDUCTIONS:
            return False
        member_ids = {m.id for m in members}
        # A member that gathers (a slice) reads its input's buffer at other
        # indices than its own: that input cannot be computed in the same loop.
        if any(m.op.gather is not None and m.inputs[0].id in member_ids for m in members):
            return False
        outside = set()
        for m in members:
            for i in m.inputs:
                if i.id in member_ids:
                    # A reduction's result exists only after its loop nest.
                    if i.op.iteration == "reduce":
                        return False
                elif i.id in self.deps:
                    outside |= self.deps[i.id]
        return not (self.reach(outside) & cands)

    def join(self, cands, n, axes):
        target = min(cands)
        for c in cands:
            if c != target:
                self.parent[c] = target
                self.members[target].extend(self.members[c])
                self.members[c] = []
                self.reads[target] |= self.reads[c]
                if self.axes[c]:   # the merged loop nest keeps the reduction it holds
                    self.axes[target] = self.axes[c]
        self.members[target].append(n)
        self.note_reads(target, n)
        if axes is not None:
            self.axes[target] = axes
        return target

    def note_reads(self, g, n):
        """Group g now holds node n: it depends on what n's inputs depend on."""
        for i in n.inputs:
            self.reads[g] |= self.deps.get(i.id, set())

    def candidates(self, n, shape, reduce_axes):
        """Groups node n could join: those of its inputs (the reduced input,
        for a reduction) over the same iteration shape and compatible axes."""
        # A gathering member (a slice) starts a loop of its own; its readers join it.
        pool = [] if n.op.gather is not None else [n.inputs[0]] if reduce_axes is not None else n.inputs
        cands = set()
        for i in pool:
            if i.id in self.group_of:
                g = self.find(self.group_of[i.id])
                if self.shape[g] == shape and (reduce_axes is None or self.axes[g] in ((), reduce_axes)):
                    cands.add(g)
        # Two groups with different reductions cannot share a loop nest.
        if len({self.axes[c] for c in cands} - {()}) > 1:
            cands = {max(cands, key=lambda c: len(self.members[c]))}
        return cands


def _plan_groups(order):
    """Greedy fusion in program order: each loop node joins the groups of
    its inputs when that keeps the kernel graph acyclic (all of them, else
    the largest that is legal), or starts a group of its own."""
    groups = _Groups()
    for n in order:
        in_deps = set()
        for i in n.inputs:
            in_deps |= groups.deps.get(i.id, set())
        if not is_loop_node(n):
            groups.deps[n.id] = in_deps
            continue
        reduce_axes = n.attrs["axis"] if n.op.iteration == "reduce" else None
        shape = n.inputs[0].shape if reduce_axes is not None else n.shape
        cands = groups.candidates(n, shape, reduce_axes)
        chosen = None
        if cands and groups.legal(cands, n):
            chosen = groups.join(cands, n, reduce_axes)
        else:
            for c in sorted(cands, key=lambda c: -len(groups.members[c])):
                if groups.legal({c}, n):
                    chosen = groups.join({c}, n, reduce_axes)
                    break
        if chosen is None:
            chosen = groups.new(shape, reduce_axes or ())
            groups.members[chosen].append(n)
            groups.note_reads(chosen, n)
        groups.group_of[n.id] = chosen
        groups.deps[n.id] = in_deps | {chosen}
    return groups, groups.group_of


def plan(program, gemm_updates=False):
    """Turn a `Program` into kernels, an order, in-place updates and buffers.
    gemm_updates: the target's matrix products can accumulate into their
    output (C = alpha * A @ B + C), so SGD-style updates of a product fold
    into it (`_fold_updates_into_products`)."""
    roots = program.roots
    order = topo_sort(roots)
    position = {n.id: k for k, n in enumerate(order)}
    users = consumers(order)
    root_ids = {r.id for r in roots}
    inline = {n.id: n._value.reshape(()).item() for n in order
              if n.kind == "constant" and n._value.size == 1 and n.shape == ()}

    groups, group_of = _plan_groups(order)
    kernels, kernel_of_node = [], {}
    seen_groups = {}
    for n in order:
        if n.op is None or n.op is scan_out:   # a scan's results belong to its kernel
            continue
        if is_multi_output(n):
            step = plan_step(n, parts_of(n, order), gemm_updates)
            k = Kernel("scan", [n] + step.parts, stores=step.parts, body=step)
        elif n.id in group_of:
            g = groups.find(group_of[n.id])
            if g in seen_groups:
                continue
            members = sorted(groups.members[g], key=lambda m: position[m.id])
            k = Kernel("loop", members, groups.shape[g], groups.axes[g])
            seen_groups[g] = k
        else:
            k = Kernel(n.op.kernel, [n])
            total = _summing_over_batch(n, users, group_of, groups, root_ids)
            if total is not None:
                # The product's only reader sums it over batch axes (a
                # weight's gradient): the product kernel accumulates into
                # the sum and the stack of products never exists.
                k.nodes.append(total)
                seen_groups[groups.find(group_of[total.id])] = k
        kernels.append(k)
        for m in k.nodes:
            kernel_of_node[m.id] = k

    for k in kernels:
        ids = {m.id for m in k.nodes}
        if k.form != "scan":
            k.stores = [m for m in k.nodes if m.id in root_ids or any(u.id not in ids for u in users[m.id])
                        or m.op.iteration == "reduce"]
        reads = {}
        for m in k.nodes:
            for i in m.inputs:
                if i.id not in ids and i.id not in inline:
                    reads[i.id] = i
        k.reads = list(reads.values())

    in_place, copies, snapshot_values, order_k = _schedule(kernels, kernel_of_node, program, users,
                                                           {o.id for o in program.outputs},
                                                           inline if gemm_updates else None)
    for idx, k in enumerate(order_k):
        k.name = f"k{idx}_{(k.node if k.form == 'scan' else k.nodes[-1]).op.name}"  # no node ids: the source must be stable
    buffers, specs = _assign_buffers(order_k, in_place, roots, inline)
    snapshots = {}
    for v in snapshot_values:
        if v.id not in snapshots:
            snapshots[v.id] = (v, len(specs))
            specs.append((v.shape, v.dtype))
    return Plan(order_k, roots, in_place, copies, buffers, specs, inline, snapshots)


@dataclass
class Step:
    """How a scan kernel runs: its step as a program of its own (`program`,
    optimized, and its `plan`), run `steps` times (last to first when
    `reverse`), and where each of the step's values lives in the outer
    step: `ports` lists (step node, outer node, shift): the step reads or
    writes the outer node's time entry t + shift at step t (shift None:
    the whole outer value, every step). Before the first step each initial
    carry is copied into entry `entry` of its stack (`inits`: (stack,
    value)) and each gradient sum (`sums`) is zeroed. `parts`: the scan's
    results that the kernel writes (stacks of carries and sums always;
    outputs only where read)."""
    program: object
    plan: Plan
    ports: list
    inits: list
    sums: list
    entry: int
    steps: int
    reverse: bool
    parts: list


def plan_step(node, parts, gemm_updates=False):
    """The `Step` of scan node `node`, whose results `parts` (scan_out
    nodes by index, None where the graph reads none) are: the carry
    stacks, the outputs' stacks, the gradient sums. Every output the step
    computes is written by one of its kernels into a buffer of its own
    (the port points it at the step's entry of a stack): an output that is
    an input, a leaf, a view or another output's node is copied first."""
    from ..function import Program
    from . import optimize
    body = node.attrs["body"]
    T, reverse, shifts = node.attrs["length"], node.attrs["reverse"], node.attrs["shifts"]
    K, J, L = len(body.carry_in), len(body.xs_in), len(body.ys)
    # The carry stacks and gradient sums are written whether read or not;
    # outputs no one reads are not computed.
    parts = [p if p is not None or K <= i < K + L else scan_out(node, index=i) for i, p in enumerate(parts)]
    keep = [l for l in range(L) if parts[K + l] is not None]
    outs, updates, report = optimize(body.carry_out + [body.ys[l] for l in keep], body.accumulate)
    seen, written = set(), []
    for o in outs:
        if o.op is None or o.op.is_view or o.id in seen:
            o = materialize(o)
        seen.add(o.id)
        written.append(o)
    program = Program(body.inputs, written, updates, name="scan step", report=report)
    step_plan = plan(program, gemm_updates)
    if any(k.form == "scan" for k in step_plan.kernels):
        raise CompileError(f"scan '{node.name}' (built at {node.where}): a scan inside a scan's step runs on "
                           "target 'interpret' only")
    for t in node.inputs:   # the step's ports point into these buffers
        if _base(t) is not t or (t.kind == "constant" and t.shape == ()):
            raise AssertionError(f"scan '{node.name}' reads '{t.name}', which has no buffer of its own "
                                 "(scan inputs are materialized when the scan is built)")
    xs, zs = node.inputs[K:K + J], node.inputs[K + J:]
    read, wrote = (1, 0) if reverse else (0, 1)
    ports = ([(p, h, read) for p, h in zip(body.carry_in, parts)]
             + [(o, h, wrote) for o, h in zip(written[:K], parts[:K])]
             + [(p, x, s) for p, x, s in zip(body.xs_in, xs, shifts)]
             + [(o, parts[K + l], 0) for o, l in zip(written[K:], keep)]
             + [(p, z, None) for p, z in zip(body.closures_in, zs)]
             + [(a, acc, None) for (a, _), acc in zip(body.accumulate, parts[K + L:])])
    return Step(program, step_plan, ports, list(zip(parts[:K], node.inputs[:K])),
                parts[K + L:], T if reverse else 0, T, reverse, [p for p in parts if p is not None])


def scan_step_nodes(k):
    """Every node of scan kernel k's step program (for naming and leaves)."""
    program = k.body.program
    return topo_sort(program.roots + [p for p, _ in program.updates] + list(program.inputs))


def _summing_over_batch(n, users, group_of, groups, root_ids):
    """The sum node that alone reads the batched matrix product n and sums
    it over some of its leading (batch) axes in a loop nest of its own;
    else None."""
    if n.op.kernel != "matmul" or n.ndim < 3 or n.id in root_ids or len(users[n.id]) != 1:
        return None
    s = users[n.id][0]
    if s.op.name != "sum" or s.id not in group_of or s.dtype != n.dtype:
        return None
    if groups.members[groups.find(group_of[s.id])] != [s]:
        return None
    axes = s.attrs["axis"]
    return s if axes and all(a < n.ndim - 2 for a in axes) else None


def _base(n):
    """The node whose buffer a view aliases."""
    while n.op is not None and n.op.is_view:
        n = n.inputs[0]
    return n


def _schedule(kernels, kernel_of_node, program, users, output_ids, gemm_inline=None):
    """Order kernels; write each update straight into its parameter when the
    old value is not needed afterwards, else into a temporary copied last.
    With `gemm_inline` (the inlined constants), updates `p - c * (A @ B)`
    fold into their matrix product."""
    index = {id(k): i for i, k in enumerate(kernels)}
    edges = {i: set() for i in range(len(kernels))}   # i -> kernels that must run after i
    for i, k in enumerate(kernels):
        for r in k.reads:
            if r.id in kernel_of_node:
                edges[index[id(kernel_of_node[r.id])]].add(i)

    update_counts = {}
    for _, v in program.updates:
        update_counts[v.id] = update_counts.get(v.id, 0) + 1
    in_place, copies = {}, []
    for param, value in program.updates:
        k = kernel_of_node.get(value.id)
        ok = (k is not None and k.form == "loop" and value.op.iteration == "elementwise"
              and value.shape == param.shape == k.shape and value.id not in output_ids
              and param.id not in output_ids and update_counts[value.id] == 1
              # Members of k that read the new value read it at the same
              # element, from a local: Adam's m' and v' feed the param's update.
              and all(kernel_of_node.get(u.id) is k for u in users[value.id]))
        if ok:
            # The param may be read inside k only at the iteration index.
            for m in k.nodes:
                for i in m.inputs:
                    if _base(i).id == param.id and (i is not param or i.shape != k.shape):
                        ok = False
        if ok:
            readers = [j for j, other in enumerate(kernels) if other is not k
                       and any(_base(r).id == param.id for r in other.reads)]
            trial = {a: set(b) for a, b in edges.items()}
            kid = index[id(k)]
            for j in readers:
                trial[j].add(kid)
            if _topo(trial) is not None:
                edges = trial
                in_place[value.id] = param
                continue
        copies.append((param, value))
    # Copies run after every kernel, and read their values there: a copy
    # whose value is (a view of) a param updated in this step must see that
    # param's pre-step value, so that param cannot be written in place
    # ({A: A - 1, B: A}). Demoting it only removes constraints.
    updated = {p.id for p, _ in program.updates}
    demote = True
    while demote:
        demote = False
        read_by_copies = {_base(v).id for _, v in copies}
        for vid, param in list(in_place.items()):
            if param.id in read_by_copies:
                del in_place[vid]
                copies.append((param, next(v for p, v in program.updates if p is param)))
                demote = True
    # Copies write one after another; the values that are updated leaves
    # themselves ({A: B, B: A}) are first saved to workspace buffers.
    snapshots = [v for _, v in copies if _base(v).op is None and _base(v).id in updated]
    absorbed = set()
    if gemm_inline is not None:
        edges, absorbed = _fold_updates_into_products(kernels, kernel_of_node, in_place, users, edges, index,
                                                      gemm_inline, output_ids)
    order = _topo(edges)
    if order is None:   # fusion keeps the kernel graph acyclic; this is a bpc bug
        raise AssertionError("fusion planned kernels that depend on each other in a cycle")
    return in_place, copies, snapshots, [kernels[i] for i in order if i not in absorbed]


def _fold_updates_into_products(kernels, kernel_of_node, in_place, users, edges, index, inline, output_ids):
    """SGD's update of a weight, `p - c * (A @ B)` written in place, folds
    into the product: BLAS computes p = (-c) * A @ B + p, so the gradient
    needs no buffer and the update no loop of its own; so does `p + A @ B`
    (a scan's gradient of a weight, summed over the steps). Legal when the
    gradient and the scaled gradient are read only by the update, the
    product does not read p, and every other kernel reading p can run
    before the product. Returns (edges, indices of the absorbed kernels)."""
    absorbed = set()
    for vid, param in list(in_place.items()):
        k = kernel_of_node[vid]
        folded = _product_update(k, vid, param, inline)
        if folded is None:
            continue
        g, alpha = folded
        reader = k.nodes[0]    # the node reading the product: the scaling, or the sum itself
        km = kernel_of_node.get(g.id)
        if (km is None or km.form != "matmul" or len(km.nodes) != 1 or g.shape != param.shape
                or g.dtype != param.dtype or g.id in output_ids
                or [u.id for u in users[g.id]] != [reader.id]
                or any([u.id for u in users[m.id]] != [k.nodes[j + 1].id] for j, m in enumerate(k.nodes[:-1]))
                or any(_base(i).id == param.id for i in g.inputs)):
            continue
        i, j = index[id(km)], index[id(k)]
        readers = [r for r, other in enumerate(kernels) if r not in (i, j)
                   and any(_base(x).id == param.id for x in other.reads)]
        trial = {a: set(b) - {j} for a, b in edges.items()}
        trial[j] = set()
        for r in readers:
            trial[r].add(i)
        if _topo(trial) is None:
            continue
        edges = trial
        absorbed.add(j)
        km.nodes = [g] + k.nodes
        km.stores = []
        km.update = (k.nodes[-1], alpha)
        for m in k.nodes:
            kernel_of_node[m.id] = km
    return edges, absorbed


def _product_update(k, vid, param, inline):
    """(g, alpha) when loop kernel k is exactly the update p + alpha * g of
    param p (written in place as value `vid`): SGD's `p - c * g`, or an
    accumulation `p + g` (a scan's weight-gradient sums); else None."""
    if len(k.nodes) == 2:
        mul, sub = k.nodes
        if (sub.id != vid or sub.op.name != "sub" or mul.op.name != "mul" or sub.inputs[0] is not param
                or sub.inputs[1] is not mul or sum(i.id in inline for i in mul.inputs) != 1):
            return None
        c = next(inline[i.id] for i in mul.inputs if i.id in inline)
        return next(i for i in mul.inputs if i.id not in inline), -c
    if len(k.nodes) == 1:
        (add,) = k.nodes
        if add.id != vid or add.op.name != "add" or not any(i is param for i in add.inputs) \
                or add.inputs[0] is add.inputs[1]:
            return None
        return next(i for i in add.inputs if i is not param), 1.0
    return None


def _topo(edges):
    """Kahn's algorithm, preferring the original order; None on a cycle."""
    import heapq
    indeg = {i: 0 for i in edges}
    for a, bs in edges.items():
        for b in bs:
            indeg[b] += 1
    ready = [i for i, d in indeg.items() if d == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        i = heapq.heappop(ready)
        out.append(i)
        for b in edges[i]:
            indeg[b] -= 1
            if indeg[b] == 0:
                heapq.heappush(ready, b)
    return out if len(out) == len(edges) else None


def _assign_buffers(kernels, in_place, roots, inline):
    """Give each stored value a buffer; reuse a buffer of the same shape and
    dtype once every reader of its previous value has run.

    Lifetimes are those of alias classes: a read of a view (transpose,
    reshape) is a read of the buffer it aliases, and a buffer that an
    output or update value is, or is a view of, is read after the step, so
    it is never reused."""
    pinned = {_base(r).id for r in roots}
    last_use = {}
    for idx, k in enumerate(kernels):
        for r in k.reads:
            last_use[_base(r).id] = idx
    buffers, specs, free = {}, [], {}
    pending = []  # (last use index, buffer index, key)
    for idx, k in enumerate(kernels):
        still = []
        for end, b, key in pending:
            if end < idx:
                free.setdefault(key, []).append(b)
            else:
                still.append((end, b, key))
        pending = still
        if k.form == "view":
            continue
        for n in k.stores:
            if n.id in in_place or n.id in inline:
                continue
            key = (n.shape, n.dtype.str)
            if free.get(key):
                b = free[key].pop()
            else:
                b = len(specs)
                specs.append((n.shape, n.dtype))
            buffers[n.id] = b
            if n.id not in pinned:
                pending.append((last_use.get(n.id, idx), b, key))
    return buffers, specs

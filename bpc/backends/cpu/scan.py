"""A scan on the CPU: the step's kernels, compiled once, called once per
time step by the step runner.

A scan kernel of the plan becomes:
  * a setup kernel: the initial carries copied into their entry of the
    carry stacks, the accumulators (a backward scan's weight gradients)
    zeroed;
  * the step's kernels (its own plan, `passes.fuse.plan_body`), emitted
    like any others, then listed T times in the call table. Each step's
    copy of the table entries points the step's inputs and outputs at that
    step's slice of the time-major stacks (entry = stack address + byte
    offset a + b * N, N the batch size), so a step reads x_t and the carry
    and writes the new carry and y_t in place, and nothing is compiled per
    step: compile time does not grow with T.
The step's intermediates get workspace arrays of their own; its closures
(weights) and accumulators are read and written where the outer step keeps
them.
"""
import math


from ...errors import CompileError


class _Port:
    """Where a step's placeholder (or output, or accumulator) lives: outer
    `node`'s storage, at time entry t + shift (shift None: the same array
    every step)."""

    def __init__(self, node, shift):
        self.node, self.shift = node, shift


def _step_bytes(stack):
    """(a, b): the bytes of one time entry of a time-major stack, a + b * N."""
    per = math.prod(d for d in stack.shape[1:] if d is not None) * stack.dtype.itemsize
    return (0, per) if None in stack.shape[1:] else (per, 0)


def scan_calls(gen, k):
    """Append the calls of scan kernel k to the generator's calls."""
    from .codegen import KernelWriter
    from ..lowering import kernel_emitter, view_chain
    node, parts = k.node, k.stores
    program, plan = k.body
    body = node.attrs["body"]
    T, reverse, shifts = node.attrs["length"], node.attrs["reverse"], node.attrs["shifts"]
    K, J, L = len(body.carry_in), len(body.xs_in), len(body.ys)
    inits, xs, zs = node.inputs[:K], node.inputs[K:K + J], node.inputs[K + J:]
    for t in node.inputs:
        if view_chain(t)[-1] is not t or t.id in gen.plan.inline:
            raise CompileError(f"scan '{node.name}' (built at {node.where}) reads '{t.name}', which has no "
                               "buffer of its own; this is a bpc bug (scan inputs are materialized)")

    # The setup: initial carries into their stack entry, accumulators zeroed.
    w = KernelWriter(gen, f"scan setup [{K} carries, {len(parts) - K - L} accumulators]", sizes_at_run_time=True)
    entry = w.value(T if reverse else 0)
    for h, c in zip(parts[:K], inits):
        _loops(w, c.shape, f"{w.array(h)}[{entry}{''.join(f', i{a}' for a in range(c.ndim))}]",
               f"{w.array(c)}[{', '.join(f'i{a}' for a in range(c.ndim)) or '()'}]")
    for acc in parts[K + L:]:
        _loops(w, acc.shape, f"{w.array(acc)}[{', '.join(f'i{a}' for a in range(acc.ndim)) or '()'}]", "0")
    gen._call(w, f"{k.name}: scan setup", k)

    # Ports: each placeholder, output and accumulator of the step.
    read, wrote = (1, 0) if reverse else (0, 1)
    ports = {}
    for p, h in zip(body.carry_in, parts[:K]):
        ports[p.id] = _Port(h, read)
    for o, h in zip(program.outputs[:K], parts[:K]):
        ports[o.id] = _Port(h, wrote)
    for p, x, s in zip(body.xs_in, xs, shifts):
        ports[p.id] = _Port(x, s)
    for o, y in zip(program.outputs[K:], parts[K:K + L]):
        ports[o.id] = _Port(y, 0)
    for p, z in zip(body.closures_in, zs):
        ports[p.id] = _Port(z, None)
    for (a, _), acc in zip(body.accumulate, parts[K + L:]):
        ports[a.id] = _Port(acc, None)
    virtual = {}
    for nid, port in ports.items():
        virtual[nid] = -1 - len(virtual)
        gen._storage[nid] = virtual[nid]
    by_virtual = {v: ports[nid] for nid, v in virtual.items()}
    # The step's own buffers.
    storage = [gen.add_storage(shape, dt) for shape, dt in plan.buffer_specs]
    for nid, b in plan.buffers.items():
        gen._storage.setdefault(nid, storage[b])
    gen.plan.inline.update(plan.inline)
    gen.plan.in_place.update(plan.in_place)

    # The step's kernels, once; then the calls of every step.
    first = len(gen.calls)
    outer_storage = gen._buffer_storage
    gen._buffer_storage = lambda b: storage[b]
    for bk in plan.kernels:
        if bk.form == "view":
            continue
        if bk.form == "scan":
            raise CompileError(f"scan '{node.name}' (built at {node.where}): a scan inside a scan's step "
                               "is not supported on target 'cpu'")
        ops = ", ".join(n.op.name for n in bk.nodes)
        from .codegen import RUN_TIME_SIZES
        bw = KernelWriter(gen, f"{bk.form} [{ops}]", sizes_at_run_time=bk.form in RUN_TIME_SIZES)
        kernel_emitter(gen, bk, "cpu")(bk, bw)
        gen._call(bw, f"{k.name} step: {bk.describe()}", bk)
    gen._copies(plan)
    gen._buffer_storage = outer_storage
    template = gen.calls[first:]
    del gen.calls[first:]
    gen.repeats[first] = (T, len(template))
    for i in range(T):
        t = T - 1 - i if reverse else i
        for idx, slots, sizes, describe, kern, _ in template:
            real, offsets = [], []
            for s in slots:
                if s >= 0:
                    real.append(s)
                    offsets.append((0, 0))
                    continue
                port = by_virtual[s]
                real.append(gen.storage_index(port.node))
                if port.shift is None:
                    offsets.append((0, 0))
                    continue
                if port.node.kind == "input":
                    raise CompileError(f"scan '{node.name}': a stacked input must be a workspace buffer; "
                                       "this is a bpc bug")
                a, b = _step_bytes(port.node)
                offsets.append(((t + port.shift) * a, (t + port.shift) * b))
            gen.calls.append((idx, real, sizes, describe, kern, offsets))


def _loops(w, shape, dst, src):
    for a, d in enumerate(shape):
        w.emit(f"for i{a} in range({w.dim(d)}):", a + 1)
    w.emit(f"{dst} = {src}", len(shape) + 1)

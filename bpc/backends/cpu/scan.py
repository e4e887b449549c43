"""A scan on the CPU: the step's kernels, compiled once, called once per
time step by the step runner.

A scan kernel of the plan becomes:
  * a setup kernel: the initial carries copied into their entry of the
    carry stacks, the accumulators (a backward scan's weight gradients)
    zeroed;
  * the step's kernels (its own plan, `passes.fuse.plan_step`), emitted
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


def _step_bytes(stack):
    """(a, b): the bytes of one time entry of a time-major stack, a + b * N."""
    per = math.prod(d for d in stack.shape[1:] if d is not None) * stack.dtype.itemsize
    return (0, per) if None in stack.shape[1:] else (per, 0)


def scan_calls(gen, k):
    """Append the calls of scan kernel k (its `passes.fuse.Step`) to the generator's calls."""
    from .codegen import KernelWriter, RUN_TIME_SIZES
    from ..lowering import kernel_emitter
    node, step = k.node, k.body

    # The setup: initial carries into their stack entry, gradient sums zeroed.
    w = KernelWriter(gen, f"scan setup [{len(step.inits)} carries, {len(step.sums)} sums]", sizes_at_run_time=True)
    entry = w.value(step.entry)
    for h, c in step.inits:
        _loops(w, c.shape, f"{w.array(h)}[{entry}{''.join(f', i{a}' for a in range(c.ndim))}]",
               f"{w.array(c)}[{', '.join(f'i{a}' for a in range(c.ndim)) or '()'}]")
    for acc in step.sums:
        _loops(w, acc.shape, f"{w.array(acc)}[{', '.join(f'i{a}' for a in range(acc.ndim)) or '()'}]", "0")
    gen._call(w, f"{k.name}: scan setup", k)

    # Each port is a storage index of its own (negative) while the step's
    # kernels are written; the calls of step t replace it by the outer
    # node's storage and the byte offset of entry t + shift.
    ports = {}
    for inner, outer, shift in step.ports:
        ports[-1 - len(ports)] = (outer, shift)
        gen._storage[inner.id] = -len(ports)
    # The step's own buffers.
    storage = [gen.add_storage(shape, dt) for shape, dt in step.plan.buffer_specs]
    for nid, b in step.plan.buffers.items():
        gen._storage.setdefault(nid, storage[b])
    gen.plan.inline.update(step.plan.inline)
    gen.plan.in_place.update(step.plan.in_place)

    # The step's kernels, once; then the calls of every step.
    first = len(gen.calls)
    outer_storage = gen._buffer_storage
    gen._buffer_storage = lambda b: storage[b]
    for bk in step.plan.kernels:
        if bk.form == "view":
            continue
        bw = KernelWriter(gen, f"{bk.form} [{', '.join(n.op.name for n in bk.nodes)}]",
                          sizes_at_run_time=bk.form in RUN_TIME_SIZES)
        kernel_emitter(gen, bk, "cpu")(bk, bw)
        gen._call(bw, f"{k.name} step: {bk.describe()}", bk)
    gen._copies(step.plan)
    gen._buffer_storage = outer_storage
    template = gen.calls[first:]
    del gen.calls[first:]
    gen.repeats[first] = (step.steps, len(template))
    for i in range(step.steps):
        t = step.steps - 1 - i if step.reverse else i
        for idx, slots, sizes, describe, kern, _ in template:
            real, offsets = [], []
            for s in slots:
                if s >= 0:
                    real.append(s)
                    offsets.append((0, 0))
                    continue
                outer, shift = ports[s]
                real.append(gen.storage_index(outer))
                if shift is None:
                    offsets.append((0, 0))
                    continue
                if outer.kind == "input":   # the runner writes inputs' addresses, without offsets
                    raise CompileError(f"scan '{node.name}': a stacked input must be a workspace buffer; "
                                       "this is a bpc bug")
                a, b = _step_bytes(outer)
                offsets.append(((t + shift) * a, (t + shift) * b))
            gen.calls.append((idx, real, sizes, describe, kern, offsets))


def _loops(w, shape, dst, src):
    for a, d in enumerate(shape):
        w.emit(f"for i{a} in range({w.dim(d)}):", a + 1)
    w.emit(f"{dst} = {src}", len(shape) + 1)

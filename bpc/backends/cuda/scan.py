"""A scan on CUDA: the step's kernels, generated once, launched once per
time step.

A scan kernel of the plan becomes launches of:
  * setup kernels: each initial carry copied into its entry of the carry
    stack, each accumulator (a backward scan's weight gradients) zeroed;
  * the step's kernels (its own plan, `passes.fuse.plan_step`), generated
    like any others, their arrays named after the step's placeholders
    ("ports"). The backend binds each step's launches to that step's
    slices of the time-major stacks (views of the device buffers: no
    copies), so nothing is compiled per step.
"""
from dataclasses import dataclass

from ..lowering import size_expr


@dataclass
class Loop:
    """The launches of a scan's step: specs[first:first + count], run
    `steps` times; ports: port argument -> (outer array argument, time
    shift or None for the same array every step, the outer node)."""
    first: int
    count: int
    steps: int
    reverse: bool
    ports: dict


def scan_launches(gen, k, count):
    """Generate the launches of scan kernel k (its `passes.fuse.Step`);
    returns (listing lines, the count of kernels named so far)."""
    from ..lowering import kernel_emitter
    step = k.body
    out = []
    for h, c in step.inits:
        gen._start(f"k{count}_scan_init", [h])
        count += 1
        idx = [f"i{a}" for a in range(c.ndim)]
        gen._grid_stride("t", size_expr(c.shape), 1)
        gen._split("t", range(c.ndim), c.shape, 2)
        gen.emit(gen.write(h, [str(step.entry)] + idx, gen.read(c, idx)), 2)
        out += gen._finish("copy", {"total": c.shape}, f"{gen._kernel_name}: initial carry into the stack")
    for acc in step.sums:
        gen._start(f"k{count}_scan_zero", [acc])
        count += 1
        gen._grid_stride("t", size_expr(acc.shape), 1)
        gen.emit(f"{gen._use(gen.storage(acc), acc.dtype)}[t] = {acc.dtype.name}(0)", 2)
        out += gen._finish("copy", {"total": acc.shape}, f"{gen._kernel_name}: zero a gradient sum")

    ports = {}
    for inner, outer, shift in step.ports:
        name = f"port{len(gen.overrides)}"
        gen.overrides[inner.id] = name
        ports[name] = (gen.storage(outer), shift, outer)
    base = len(gen.plan.buffer_specs) + len(gen.extra_buffers)
    gen.extra_buffers.extend(step.plan.buffer_specs)
    for nid, b in step.plan.buffers.items():
        gen.overrides.setdefault(nid, f"b{base + b}")
    gen.plan.inline.update(step.plan.inline)
    gen.plan.in_place.update(step.plan.in_place)

    first = len(gen.specs)
    out.append(f"# {k.name}: the next launches run {step.steps} times, once per time step, on that step's slices")
    for bk in step.plan.kernels:
        if bk.form == "view":
            continue
        gen._start(f"k{count}_step_{gen.names[bk.nodes[-1]]}", bk.nodes)
        count += 1
        describe = f"{gen._kernel_name}: {bk.form} [{', '.join(n.op.name for n in bk.nodes)}]"
        out += ["#   " + line[2:] for line in kernel_emitter(gen, bk, "cuda")(bk, describe)]
    snapshots = step.plan.snapshots
    for value, b in snapshots.values():
        gen._start(f"k{count}_step_save", [value])
        count += 1
        out += gen._kernel_copy(f"b{base + b}", value, value, f"{gen._kernel_name}: save a value")
    for param, value in step.plan.copies:
        gen._start(f"k{count}_step_update", [param])
        count += 1
        saved = f"b{base + snapshots[value.id][1]}" if value.id in snapshots else None
        out += gen._kernel_copy(gen.storage(param), param, value, f"{gen._kernel_name}: write a sum", saved=saved)
    gen.loops.append(Loop(first, len(gen.specs) - first, step.steps, step.reverse, ports))
    return out, count



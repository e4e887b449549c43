"""A scan on CUDA: the step's kernels, generated once, launched once per
time step.

A scan kernel of the plan becomes launches of:
  * setup kernels: each initial carry copied into its entry of the carry
    stack, each accumulator (a backward scan's weight gradients) zeroed;
  * the step's kernels (its own plan, `passes.fuse.plan_body`), generated
    like any others, their arrays named after the step's placeholders
    ("ports"). The backend binds each step's launches to that step's
    slices of the time-major stacks (views of the device buffers: no
    copies), so nothing is compiled per step.
"""
from dataclasses import dataclass

from ...errors import CompileError
from ..lowering import view_chain


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
    """Generate the launches of scan kernel k; returns (listing lines, kernels named)."""
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
    out = []
    entry = str(T if reverse else 0)
    for h, c in zip(parts[:K], inits):
        gen._start(f"k{count}_scan_init", [h])
        count += 1
        idx = [f"i{a}" for a in range(c.ndim)]
        gen._grid_stride("t", _size(c.shape), 1)
        gen._split("t", range(c.ndim), c.shape, 2)
        gen.emit(gen.write(h, [entry] + idx, gen.read(c, idx)), 2)
        out += gen._finish("copy", {"total": c.shape}, f"{gen._kernel_name}: initial carry into the stack")
    for acc in parts[K + L:]:
        gen._start(f"k{count}_scan_zero", [acc])
        count += 1
        gen._grid_stride("t", _size(acc.shape), 1)
        gen.emit(f"{gen._use(gen.storage(acc), acc.dtype)}[t] = {acc.dtype.name}(0)", 2)
        out += gen._finish("copy", {"total": acc.shape}, f"{gen._kernel_name}: zero a gradient sum")

    read, wrote = (1, 0) if reverse else (0, 1)
    ports = {}

    def port(inner, outer, shift):
        name = f"port{len(gen.overrides)}_{gen.names[inner] if inner.op is None else 'out'}"
        gen.overrides[inner.id] = name
        ports[name] = (gen.storage(outer), shift, outer)
    for p, h in zip(body.carry_in, parts[:K]):
        port(p, h, read)
    for o, h in zip(program.outputs[:K], parts[:K]):
        port(o, h, wrote)
    for p, x, s in zip(body.xs_in, xs, shifts):
        port(p, x, s)
    for o, y in zip(program.outputs[K:], parts[K:K + L]):
        port(o, y, 0)
    for p, z in zip(body.closures_in, zs):
        port(p, z, None)
    for (a, _), acc in zip(body.accumulate, parts[K + L:]):
        port(a, acc, None)
    base = len(gen.plan.buffer_specs) + len(gen.extra_buffers)
    gen.extra_buffers.extend(plan.buffer_specs)
    for nid, b in plan.buffers.items():
        gen.overrides.setdefault(nid, f"b{base + b}")
    gen.plan.inline.update(plan.inline)
    gen.plan.in_place.update(plan.in_place)

    first = len(gen.specs)
    out.append(f"# {k.name}: the next launches run {T} times, once per time step, on that step's slices")
    for bk in plan.kernels:
        if bk.form == "view":
            continue
        if bk.form == "scan":
            raise CompileError(f"scan '{node.name}' (built at {node.where}): a scan inside a scan's step "
                               "is not supported on target 'cuda'")
        gen._start(f"k{count}_step_{gen.names[bk.nodes[-1]]}", bk.nodes)
        count += 1
        describe = f"{gen._kernel_name}: {bk.form} [{', '.join(n.op.name for n in bk.nodes)}]"
        out += ["#   " + line[2:] for line in __import__("bpc.backends.lowering", fromlist=["kernel_emitter"])
                .kernel_emitter(gen, bk, "cuda")(bk, describe)]
    for value, b in plan.snapshots.values():
        gen._start(f"k{count}_step_save", [value])
        count += 1
        out += gen._kernel_copy(f"b{base + b}", value, value, f"{gen._kernel_name}: save a value")
    for param, value in plan.copies:
        gen._start(f"k{count}_step_update", [param])
        count += 1
        saved = f"b{base + plan.snapshots[value.id][1]}" if value.id in plan.snapshots else None
        out += gen._kernel_copy(gen.storage(param), param, value, f"{gen._kernel_name}: write a sum", saved=saved)
    gen.loops.append(Loop(first, len(gen.specs) - first, T, reverse, ports))
    return out, count


def _size(shape):
    from ..lowering import size_expr
    return size_expr(shape)

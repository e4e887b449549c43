"""Graph views: Graphviz DOT and a typed text listing.

`to_graph` builds a networkx view of everything some tensors depend on; the
DOT and text writers render it. Nodes derived by `bpc.grad` form their own
cluster ("backward"), so the gradient graph is visible at a glance; with a
`feed`, each small node also shows its value (and, given `grads`, its
gradient next to it, as in micrograd's drawings).
"""
import os
import shutil
import subprocess

import networkx as nx
import numpy as np

from .graph.tensor import Tensor, format_shape
from .graph.traverse import topo_sort
from .io import atomic_write_text

_DT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "bool"}
_STYLE = {
    "input": 'shape=box, style="rounded,filled", fillcolor="#dbeafe"',
    "param": 'shape=box, style="filled", fillcolor="#fde68a"',
    "state": 'shape=box, style="filled,dashed", fillcolor="#fef3c7"',
    "constant": 'shape=plaintext, fontcolor="#555555"',
    "forward": 'shape=ellipse, style="filled", fillcolor="#ffffff"',
    "grad": 'shape=ellipse, style="filled", fillcolor="#fee2e2"',
}


def type_str(t):
    return f"{_DT.get(t.dtype.name, t.dtype.name)}[{','.join('N' if d is None else str(d) for d in t.shape)}]"


def _short_value(v, limit=8):
    v = np.asarray(v)
    if v.size > limit:
        return None
    if v.ndim == 0:
        return f"{v.item():.4g}"
    return np.array2string(v, precision=4, separator=",", suppress_small=True).replace("\n", "")


def _as_list(outputs):
    return [outputs] if isinstance(outputs, Tensor) else list(outputs)


def to_graph(outputs, values=None, grads=None, groups=None):
    """A networkx MultiDiGraph of the nodes `outputs` depend on. Node attributes:
    tensor, label, role (input/param/state/constant/forward/grad), output,
    and, when given, value, grad and group (a fused kernel's name)."""
    outs = _as_list(outputs)
    out_ids = {o.id for o in outs}
    g = nx.MultiDiGraph()   # x * x has two edges from x, not one
    for n in topo_sort(outs):
        role = n.kind if n.op is None else n.origin
        label = n.name if n.op is None else f"{n.op.name}\\n{n.name}"
        if n.kind == "constant" and n._value.size <= 4:
            label = _short_value(n._value)
        label += f"\\n{type_str(n)}"
        attrs = dict(tensor=n, label=label, role=role, output=n.id in out_ids)
        if values is not None and n.id in values:
            text = _short_value(values[n.id])
            if text is not None:
                attrs["value"] = text
        if grads is not None and n.id in grads:
            text = _short_value(grads[n.id])
            if text is not None:
                attrs["grad"] = text
        if groups is not None and n.id in groups:
            attrs["group"] = groups[n.id]
        g.add_node(n.id, **attrs)
        for pos, i in enumerate(n.inputs):
            g.add_edge(i.id, n.id, pos=pos)
        if n.op is not None and n.op.name == "scan":
            _add_step(g, n)
    return g


def _add_step(g, scan):
    """The step of a scan node as a cluster of its own: its placeholders,
    ops and results, each result drawn into the scan node (dashed)."""
    body = scan.attrs["body"]
    title = (f"step of {scan.name}, run {scan.attrs['length']} times" + (" in reverse" if scan.attrs["reverse"] else "")
             + (" (derived by bpc.grad)" if scan.origin == "grad" else ""))
    for n in topo_sort(body.roots + body.inputs):
        if n.id in g:
            continue
        role = n.kind if n.op is None else n.origin
        label = (n.name if n.op is None else f"{n.op.name}\\n{n.name}") + f"\\n{type_str(n)}"
        if n.kind == "constant" and n._value.size <= 4:
            label = _short_value(n._value) + f"\\n{type_str(n)}"
        g.add_node(n.id, tensor=n, label=label, role=role, output=False, step=title)
        for pos, i in enumerate(n.inputs):
            g.add_edge(i.id, n.id, pos=pos)
    for r in body.roots:
        g.add_edge(r.id, scan.id, pos=None, step_result=True)


def _node_line(nid, a):
    label = a["label"]
    if "value" in a:
        label += f"\\nvalue {a['value']}"
    if "grad" in a:
        label += f"\\ngrad {a['grad']}"
    extra = ", peripheries=2" if a["output"] else ""
    tip = a["tensor"].where.replace('"', "'")
    label = label.replace('"', '\\"')
    return f'  n{nid} [label="{label}", {_STYLE[a["role"]]}{extra}, tooltip="{tip}"];'


def dot_text(g, title=None):
    """DOT text for a graph made by `to_graph`."""
    lines = ["digraph bpc {", "  rankdir=TB;", '  node [fontname="Helvetica", fontsize=10];',
             '  edge [color="#666666", arrowsize=0.6];']
    if title:
        lines.append(f'  labelloc=t; label="{title}";')
    clusters = {}
    for nid, a in g.nodes(data=True):
        if "step" in a:
            key = ("step", a["step"])
        elif "group" in a:
            key = ("kernel", a["group"])
        elif a["role"] == "grad":
            key = ("backward", "backward")
        else:
            key = None
        clusters.setdefault(key, []).append(nid)
    for key, nids in clusters.items():
        body = [_node_line(nid, g.nodes[nid]) for nid in nids]
        if key is None:
            lines.extend(body)
            continue
        kind, name = key
        cid = "backward" if kind == "backward" else kind[0] + "_" + "".join(c if c.isalnum() else "_" for c in name)
        title = {"backward": "backward (derived by bpc.grad)", "kernel": f"fused kernel {name}", "step": name}[kind]
        color = {"backward": "#b91c1c", "kernel": "#1d4ed8", "step": "#047857"}[kind]
        lines.append(f"  subgraph cluster_{cid} {{")
        lines.append(f'    label="{title}"; color="{color}"; fontcolor="{color}"; style=dashed;')
        lines.extend("  " + b for b in body)
        lines.append("  }")
    for u, v, a in g.edges(data=True):
        lines.append(f"  n{u} -> n{v}" + (" [style=dashed];" if a.get("step_result") else ";"))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _maybe_optimized(outs, optimize):
    if not optimize:
        return outs
    from .passes import optimize as run_passes
    return run_passes(outs)[0]


def to_dot(outputs, path=None, feed=None, grads=None, title=None, fused=None, optimize=False):
    """Graphviz DOT text of everything `outputs` depend on.

    outputs: a tensor or list of tensors (e.g. `[loss, *bpc.grad(loss, params)]`).
    path:    also write it there; `.svg`/`.png` renders with Graphviz's `dot`.
    feed:    {input: array} — evaluate the graph and show small values.
    grads:   {tensor: gradient tensor} — with `feed`, show each gradient's
             value next to its tensor.
    fused:   a compiled `bpc.Function`: draw its optimized graph with each
             fused kernel as a cluster.
    optimize: show the graph after bpc's simplification passes (as compiled).
    """
    values = grad_values = groups = None
    if fused is not None:
        outputs = fused.program.roots
        groups = getattr(fused.backend, "kernel_of", lambda: {})()
    outs = _maybe_optimized(_as_list(outputs), optimize)
    if grads and optimize:
        keys = list(grads)
        grads = dict(zip(keys, _maybe_optimized([grads[k] for k in keys], True)))
    if feed is not None:
        values, grad_values = _evaluate_all(outs, feed, grads)
    text = dot_text(to_graph(outs, values, grad_values, groups), title)
    if path is not None:
        write_dot(text, path)
    return text


def _evaluate_all(outs, feed, grads):
    from .backends.interpret import evaluate
    feeds, batch = {}, 1
    for k, v in feed.items():
        arr = np.asarray(v, dtype=k.dtype)
        feeds[k.id] = arr
        if None in k.shape:
            batch = arr.shape[k.shape.index(None)]
    extra = list(grads.values()) if grads else []
    values = {}
    evaluate(outs + extra, feeds, batch, visit=lambda n, v: values.__setitem__(n.id, v))
    grad_values = {t.id: values[gt.id] for t, gt in (grads or {}).items()}
    return values, grad_values


def write_dot(text, path):
    """Write DOT text, or render it when `path` ends in .svg, .png or .pdf."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in (".svg", ".png", ".pdf"):
        exe = shutil.which("dot")
        if exe is None:
            raise RuntimeError(f"rendering {path} needs Graphviz's `dot` program, which is not installed "
                               "(apt-get install graphviz, brew install graphviz, or conda install graphviz); "
                               "write a .dot file instead and render it elsewhere")
        result = subprocess.run([exe, f"-T{ext[1:]}"], input=text.encode(), capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"dot failed: {result.stderr.decode(errors='replace')}")
        atomic_write_text(path, result.stdout, binary=True)
    else:
        atomic_write_text(path, text)


def to_text(outputs, optimize=False):
    """A typed text listing of the graph, one line per op, like JAX's jaxpr:
    easy to read and to diff. Nodes derived by `bpc.grad` are marked `'`.
    A scan lists its step (the body run once per time step) under it,
    indented. With `optimize`, list the graph after bpc's simplification
    passes."""
    outs = _maybe_optimized(_as_list(outputs), optimize)
    order = topo_sort(outs)
    lines = []
    for kind in ("input", "param", "state"):
        leaves = [n for n in order if n.kind == kind]
        if leaves:
            lines.append(f"{kind}s: " + ", ".join(f"{n.name}:{type_str(n)}" for n in leaves))
    names = _op_lines(order, lines, "")
    lines.append("outputs: " + ", ".join(names[o.id] for o in outs))
    return "\n".join(lines)


def _op_lines(order, lines, indent):
    """Append one line per op of `order` (a step's ops under its scan);
    returns the names the listing gives each node (constants: their value)."""
    from .ops.scan import is_multi_output
    names = {n.id: n.name for n in order}
    for n in order:
        if n.kind == "constant":
            v = _short_value(n._value, 4)
            names[n.id] = v if v is not None else n.name
    typed = lambda n: "(results)" if is_multi_output(n) else type_str(n)
    width = max([len(n.name) + len(typed(n)) for n in order if n.op] + [0]) + 3
    for n in order:
        if n.op is None:
            if n.kind == "constant" and names[n.id] == n.name:
                lines.append(f"{indent}  {n.name}:{type_str(n)} = constant")
            continue
        shown = {k: v for k, v in n.attrs.items() if k not in ("body", "outputs")}
        attrs = ", ".join(f"{k}={v}" for k, v in shown.items())
        args = " ".join(names[i.id] for i in n.inputs) + (f" {{{attrs}}}" if attrs else "")
        mark = "'" if n.origin == "grad" else " "
        head = f"{n.name}:{typed(n)}".ljust(width)
        lines.append(f"{indent} {mark}{head} = {n.op.name} {args}    # {n.where}")
        if is_multi_output(n):
            _step_lines(n, lines, indent + "      ")
    return names


def _step_lines(node, lines, indent):
    """The step of a scan node: its placeholders, ops and results."""
    body = node.attrs["body"]
    groups = (("carries", body.carry_in), ("inputs x_t", body.xs_in), ("closures", body.closures_in))
    lines.append(f"{indent}step, run {node.attrs['length']} times"
                 + (" in reverse" if node.attrs["reverse"] else "") + ": "
                 + "; ".join(f"{what} " + ", ".join(f"{p.name}:{type_str(p)}" for p in ps) for what, ps in groups if ps)
                 + " <- " + ", ".join(i.name for i in node.inputs))
    order = topo_sort(body.roots)
    names = _op_lines(order, lines, indent)
    results = [f"new carries {', '.join(names[o.id] for o in body.carry_out)}"]
    if body.ys:
        results.append(f"y_t {', '.join(names[o.id] for o in body.ys)}")
    if body.accumulate:
        results.append("summed " + ", ".join(f"{a.name} += {names[v.id]}" for a, v in body.accumulate))
    lines.append(f"{indent}step returns: " + "; ".join(results))


__all__ = ["to_dot", "to_graph", "to_text", "dot_text", "write_dot", "format_shape"]

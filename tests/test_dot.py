"""Graph views: `bpc.to_dot` (Graphviz DOT, parsed back with pydot) and
`bpc.to_text` (a typed listing), with the backward graph marked, values and
gradients annotated, and rendering through Graphviz's `dot`."""
import re
import shutil

import numpy as np
import pydot
import pytest

import bpc
from bpc.dot import type_str
from bpc.graph.traverse import topo_sort

# pydot's parser uses pyparsing names that newer pyparsing deprecates.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def small_network():
    """x -> tanh(x @ W + b) -> mean square, with its gradients."""
    x = bpc.input("x", (None, 4))
    W = bpc.param("W", (4, 3), seed=0)
    b = bpc.param("b", (3,), init="zeros")
    loss = bpc.mean(bpc.square(bpc.tanh(x @ W + b)))
    gW, gb = bpc.grad(loss, [W, b])
    return x, W, b, loss, [gW, gb]


def parse(text):
    graphs = pydot.graph_from_dot_data(text)
    assert graphs is not None and len(graphs) == 1, "DOT text did not parse"
    return graphs[0]


def attr(node, key):
    value = node.get(key)
    return None if value is None else value.strip('"')


def node_ids(container):
    return {n.get_name() for n in container.get_nodes() if n.get_name() not in ("node", "edge", "graph")}


def test_to_dot_parses_and_clusters_the_backward_graph(tmp_path):
    """The DOT text parses; every node `bpc.grad` derived, and only those,
    sit in `cluster_backward`; every node of the graph is drawn; the text
    written to a .dot file is the text returned."""
    x, W, b, loss, grads = small_network()
    path = tmp_path / "network.dot"
    text = bpc.to_dot([loss, *grads], path=path)
    assert path.read_text() == text
    graph = parse(text)
    clusters = {s.get_name(): s for s in graph.get_subgraph_list()}
    assert set(clusters) == {"cluster_backward"}
    nodes = topo_sort([loss, *grads])
    derived = {f"n{n.id}" for n in nodes if n.op is not None and n.origin == "grad"}
    assert derived and node_ids(clusters["cluster_backward"]) == derived
    assert node_ids(graph) | derived == {f"n{n.id}" for n in nodes}
    assert len(graph.get_edge_list()) == sum(len(n.inputs) for n in nodes)


def test_to_dot_draws_each_scans_step_as_a_cluster():
    """A scan's step (and its gradient's, a reverse scan) is drawn as a
    cluster of its own holding exactly the step's nodes, its results drawn
    into the scan node (dashed edges)."""
    x = bpc.input("x", (None, 5, 4))
    rnn = bpc.nn.SimpleRNN(4, 3, seed=0)
    loss = bpc.mean(rnn(x) ** 2)
    grads = bpc.grad(loss, rnn.params)
    graph = parse(bpc.to_dot([loss, *grads]))
    steps = {s.get_label().strip('"'): s for s in graph.get_subgraph_list() if s.get_name().startswith("cluster_s_")}
    scans = [n for n in topo_sort([loss, *grads]) if n.op is not None and n.op.name == "scan"]
    assert len(steps) == len(scans) == 2
    for scan in scans:
        body = scan.attrs["body"]
        title = f"step of {scan.name}, run 5 times" + (" in reverse" if scan.attrs["reverse"] else "") + (
            " (derived by bpc.grad)" if scan.origin == "grad" else "")
        ops_and_placeholders = {f"n{n.id}" for n in topo_sort(body.roots + body.inputs) if n.kind != "constant"}
        assert ops_and_placeholders and ops_and_placeholders <= node_ids(steps[title])
        dashed = [e for e in graph.get_edge_list() if e.get_destination() == f"n{scan.id}" and e.get("style")]
        assert len(dashed) == len(body.roots)


def test_to_dot_styles_inputs_params_and_outputs_differently():
    """Inputs, params, forward ops and derived ops each look different;
    outputs get a double border; labels carry the typed shape."""
    x, W, b, loss, grads = small_network()
    graph = parse(bpc.to_dot([loss, *grads]))
    by_id = {n.get_name(): n for n in graph.get_nodes()}
    for s in graph.get_subgraph_list():
        by_id.update({n.get_name(): n for n in s.get_nodes()})
    style = lambda t: (attr(by_id[f"n{t.id}"], "shape"), attr(by_id[f"n{t.id}"], "style"),
                       attr(by_id[f"n{t.id}"], "fillcolor"))
    forward_op, derived_op = loss.inputs[0], grads[0]
    assert len({style(x), style(W), style(forward_op), style(derived_op)}) == 4
    assert style(W) == style(b)
    assert attr(by_id[f"n{loss.id}"], "peripheries") == "2"
    assert attr(by_id[f"n{forward_op.id}"], "peripheries") is None
    assert "f32[N,4]" in attr(by_id[f"n{x.id}"], "label")
    assert "f32[4,3]" in attr(by_id[f"n{W.id}"], "label")


def test_to_dot_annotates_values_and_gradients():
    """With `feed`, small nodes show their values; with `grads`, each
    tensor also shows its gradient (as in micrograd's drawings)."""
    x = bpc.input("x", (3,), dtype="float64")
    w = bpc.param("w", np.array([1.0, 2.0, 3.0]))
    loss = bpc.sum(x * w)
    gw, gx = bpc.grad(loss, [w, x])
    xv = np.array([0.5, -1.0, 4.0])
    graph = parse(bpc.to_dot([loss], feed={x: xv}, grads={w: gw, x: gx}))
    labels = {n.get_name(): attr(n, "label") for n in graph.get_nodes()}
    np.testing.assert_allclose(shown(labels[f"n{x.id}"], "value"), xv)
    np.testing.assert_allclose(shown(labels[f"n{x.id}"], "grad"), [1.0, 2.0, 3.0])      # d loss / dx = w
    np.testing.assert_allclose(shown(labels[f"n{w.id}"], "value"), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(shown(labels[f"n{w.id}"], "grad"), xv)                   # d loss / dw = x
    np.testing.assert_allclose(shown(labels[f"n{loss.id}"], "value"), 10.5)   # 0.5 - 2 + 12
    assert "grad" not in labels[f"n{loss.id}"]   # only the tensors in `grads` get one


def shown(label, key):
    """The numbers a node label shows after `key` (e.g. "value [ 0.5,-1. ]")."""
    (line,) = [part for part in label.split("\\n") if part.startswith(key + " ")]
    return np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d*)?(?:e[-+]?\d+)?", line[len(key):])])


def test_to_text_lists_every_op_with_typed_shapes_and_marks_derived_nodes():
    """One line per op: `name:type = op args`, with ' in front of nodes
    derived by bpc.grad; leaves and outputs are listed."""
    x, W, b, loss, grads = small_network()
    text = bpc.to_text([loss, *grads])
    lines = text.splitlines()
    assert lines[0] == "inputs: x:f32[N,4]" and lines[1] == "params: W:f32[4,3], b:f32[3]"
    assert lines[-1] == f"outputs: {loss.name}, {grads[0].name}, {grads[1].name}"
    ops = [n for n in topo_sort([loss, *grads]) if n.op is not None]
    for n in ops:
        (line,) = [ln for ln in lines if ln[2:].startswith(f"{n.name}:")]
        assert line[2:].startswith(f"{n.name}:{type_str(n)} ") and f"= {n.op.name} " in line, line
        assert line[1] == ("'" if n.origin == "grad" else " "), line
        assert "test_dot.py:" in line     # where the node was built
    assert len(lines) == 3 + len(ops)
    assert "f32[N,3]" in text and "f32[]" in text and "f32[4,N]" in text


def test_optimize_shows_fewer_nodes():
    """optimize=True draws the graph as compiled: passes remove nodes."""
    x = bpc.input("x", (None, 5))
    y = bpc.neg(bpc.neg(x)) * 1.0 + 0.0
    loss = bpc.sum(bpc.log(bpc.softmax(y)))
    def count(text):
        graph = parse(text)
        return len(node_ids(graph)) + sum(len(node_ids(s)) for s in graph.get_subgraph_list())
    plain, optimized = bpc.to_dot([loss, bpc.grad(loss, x)]), bpc.to_dot([loss, bpc.grad(loss, x)], optimize=True)
    assert count(optimized) < count(plain)
    assert len(bpc.to_text(loss, optimize=True).splitlines()) < len(bpc.to_text(loss).splitlines())


def test_rendering_without_graphviz_raises_a_clear_error(tmp_path, monkeypatch):
    """Writing .svg needs the `dot` program; without it the error says so
    (and how to get it) instead of failing obscurely, and writes nothing."""
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    x, W, b, loss, grads = small_network()
    with pytest.raises(RuntimeError, match="Graphviz"):
        bpc.to_dot([loss], path=tmp_path / "network.svg")
    assert not (tmp_path / "network.svg").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed: rendering not exercised")
def test_rendering_with_graphviz_writes_svg(tmp_path):
    """When Graphviz is installed, .svg paths are rendered by it."""
    x, W, b, loss, grads = small_network()
    path = tmp_path / "network.svg"
    bpc.to_dot([loss, *grads], path=path)
    assert "<svg" in path.read_text()


def fake_dot(tmp_path, body):
    """An executable standing in for Graphviz's `dot`."""
    exe = tmp_path / "dot"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(0o755)
    return str(exe)


def test_rendering_pipes_the_dot_text_through_graphviz(tmp_path, monkeypatch):
    """The DOT text goes to `dot -Tsvg` on stdin and its output is written
    to the path (checked with a stand-in `dot` that echoes its format and input)."""
    exe = fake_dot(tmp_path, 'echo "format $1"; cat')
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: exe if name == "dot" else None)
    x, W, b, loss, grads = small_network()
    path = tmp_path / "out" / "network.svg"
    text = bpc.to_dot([loss], path=path)
    assert path.read_text() == "format -Tsvg\n" + text


def test_a_failing_graphviz_raises_with_its_message(tmp_path, monkeypatch):
    """If `dot` fails, its stderr is in the error and no file is left behind."""
    exe = fake_dot(tmp_path, 'echo "syntax error in line 3" >&2; exit 1')
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: exe if name == "dot" else None)
    x, W, b, loss, grads = small_network()
    with pytest.raises(RuntimeError, match="syntax error in line 3"):
        bpc.to_dot([loss], path=tmp_path / "network.png")
    assert not (tmp_path / "network.png").exists()

"""State lives where it belongs: on the node, the function or the run that
owns it, never in hidden globals. Importing bpc or a backend changes
nothing; a function's checks come from its own graph."""
import os
import subprocess
import sys

import numpy as np
import pytest

import bpc
from bpc.ops.core import Op

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_bpc_loads_no_numba_and_sets_up_no_logging():
    code = ("import sys, logging, bpc, numpy as np\n"
            "x = bpc.input('x', (None, 2))\n"
            "assert bpc.function([x], bpc.sum(x), target='interpret')(np.ones((2, 2))) == 4.0\n"
            "assert 'numba' not in sys.modules, 'numba was imported'\n"
            "assert not logging.getLogger('bpc').handlers\n"
            "import bpc.backends.cuda\n"
            "assert bpc.param('w', np.ones(2))._device is None\n")
    env = dict(os.environ, PYTHONPATH=ROOT, BPC_LOG_COMPILES="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_label_range_is_checked_by_the_functions_whose_graph_uses_one_hot():
    x = bpc.input("x", (None, 3), dtype="float64")
    y = bpc.input("y", (None,), dtype="int64")
    loss = bpc.softmax_cross_entropy(x, y)
    assert "label_depth" not in y.attrs               # the input is left as declared
    with pytest.raises(bpc.CallError, match=r"input 'y': label 3 is outside \[0, 3\)"):
        bpc.function([x, y], loss, target="interpret")(np.zeros((2, 3)), np.array([0, 3]))
    # Another function of the same input, without one_hot, takes any integer.
    count = bpc.function([y], bpc.sum(y), target="interpret")
    assert count(np.array([5, 7])) == 12


def test_counter_state_advances_in_every_function_that_reads_it():
    counter = bpc.state("c", 0, counter=True)
    plain = bpc.state("s", 0)
    x = bpc.input("x", (None, 2), dtype="float64")
    f = bpc.function([x], bpc.sum(x) + bpc.cast(counter + plain, "float64"), target="interpret")
    assert [float(f(np.zeros((1, 2)))) for _ in range(3)] == [0.0, 1.0, 2.0]
    assert counter.value == 3 and plain.value == 0
    with pytest.raises(bpc.ShapeError, match="counter must be an integer scalar"):
        bpc.state("bad", np.zeros(2), counter=True)


def test_dropout_layer_owns_its_counter():
    layer = bpc.nn.Dropout(0.5, seed=0, name="drop")
    x = bpc.input("x", (None, 4), dtype="float64")
    f = bpc.function([x], layer(x, training=True), target="interpret")
    masks = [f(np.ones((2, 4))) for _ in range(2)]
    assert layer.named_state()["counter"].value == 2
    assert not np.array_equal(masks[0], masks[1])


def test_an_op_can_be_defined_again_under_its_name():
    def define():
        return Op("twice_for_test", "elementwise", lambda inputs, attrs: (inputs[0].shape, inputs[0].dtype),
                  lambda attrs, shape, x: 2 * x, scalar=lambda k, a: f"({a} * {k.c(2)})")
    first, second = define(), define()          # as when a notebook cell runs twice
    x = bpc.input("x", (2,), dtype="float64")
    assert bpc.function([x], second(x), target="interpret")(np.ones(2)).tolist() == [2.0, 2.0]
    assert first is not second


def test_grad_marks_the_nodes_it_derives():
    x = bpc.input("x", (None, 2), dtype="float64")
    w = bpc.param("w", np.ones(2))
    loss = bpc.sum(bpc.tanh(x * w))
    (g,) = bpc.grad(loss, [w])
    assert loss.origin == "forward" and g.origin == "grad"
    assert bpc.tanh(x).origin == "forward"      # nothing global leaks into later nodes

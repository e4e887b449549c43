"""Shared test setup.

`TARGETS` lists every target the op and training suites run on; tests take
the `target` fixture so a new target is covered by adding it here.

The helpers below (`OpCase`, `check_op`, `check_float32`) are the one place
where op tests build, run and finite-difference a graph. Compiled targets
take seconds to compile a function, so each case compiles exactly ONE
function returning `[*outputs, cost, *grads]` and the finite differences
call that same function with perturbed inputs.
"""
import os
import importlib.util
import shutil
import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional

# The cuda target runs on a GPU when there is one, else on Numba's CUDA
# simulator, which must be switched on before anything imports numba.
HAVE_GPU = os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None
HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
if HAVE_NUMBA_CUDA and not HAVE_GPU:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np
import pytest

import bpc
from bpc.graph.traverse import topo_sort

# BPC_TEST_TARGETS=interpret,cpu narrows the run (e.g. while working on one target).
TARGETS = [t for t in os.environ.get("BPC_TEST_TARGETS", "interpret,cpu" + (",cuda" if HAVE_NUMBA_CUDA else ""))
           .split(",") if t]


@pytest.fixture(params=TARGETS)
def target(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ----- input values --------------------------------------------------------------

BATCH = 5            # the batch size the op tests run with (not a power of two)
FD_POINTS = 12       # elements perturbed per differentiated operand


def _simplex(rng, shape):
    """Positive rows that sum to 1 along the last axis."""
    v = rng.uniform(0.2, 1.0, shape)
    return v / v.sum(axis=-1, keepdims=True)


SAMPLERS = {
    "normal": lambda rng, shape: rng.normal(0.0, 1.0, shape),
    # |v| in [0.2, 2]: away from the kinks of relu, abs, sign, leaky_relu
    "nonzero": lambda rng, shape: rng.uniform(0.2, 2.0, shape) * rng.choice([-1.0, 1.0], shape),
    "positive": lambda rng, shape: rng.uniform(0.5, 2.0, shape),
    "unit": lambda rng, shape: rng.uniform(0.1, 0.9, shape),
    "wide": lambda rng, shape: rng.uniform(-12.0, 12.0, shape),
    "simplex": _simplex,
}


@dataclass
class Arg:
    """One input of an op case: its declared shape (None = batch), dtype and
    where its values come from (a SAMPLERS name, "labels:K" for integer
    classes in [0, K), or a callable (rng, shape) -> array)."""
    name: str
    shape: tuple
    values: object = "normal"
    dtype: str = "float64"

    @property
    def is_float(self):
        return np.dtype(self.dtype).kind == "f"

    def sample(self, rng, batch):
        shape = tuple(batch if d is None else d for d in self.shape)
        if callable(self.values):
            v = self.values(rng, shape)
        elif self.values.startswith("labels:"):
            v = rng.integers(0, int(self.values.split(":")[1]), shape)
        else:
            v = SAMPLERS[self.values](rng, shape)
        return np.asarray(v, dtype=self.dtype)


@dataclass
class OpCase:
    """A graph to test: `build(*tensors)` returns one output or a list of
    them; `reference(*arrays)` computes the same with plain NumPy.

    valid:     (*arrays) -> bool, rejects inputs too close to a kink (the
               values are redrawn with the next seed).
    zero_grad: the outputs do not depend differentiably on the inputs, so
               every gradient must be exactly zero.
    fd:        compare gradients with finite differences (False only where
               the gradient deliberately differs from the derivative of the
               computed function, i.e. stop_gradient).
    eps, rtol, atol: finite-difference step and tolerances.
    """
    id: str
    build: Callable
    args: list
    reference: Callable
    valid: Optional[Callable] = None
    zero_grad: bool = False
    fd: bool = True
    eps: float = 1e-6
    rtol: float = 1e-5
    atol: float = 1e-6
    float32: bool = True    # also usable in the float32 comparisons
    batch: int = BATCH

    def sample(self):
        """Input values, deterministic per case id."""
        seed = zlib.crc32(self.id.encode())
        for attempt in range(50):
            rng = np.random.default_rng([seed, attempt])
            values = [a.sample(rng, self.batch) for a in self.args]
            if self.valid is None or self.valid(*values):
                return values
        raise AssertionError(f"{self.id}: no valid inputs found in 50 draws")


def as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def far_apart(*pairs, margin=1e-3):
    """True when every pair (a, b) of broadcastable arrays differs by more
    than `margin` everywhere (no ties for maximum/minimum/comparisons)."""
    return all(np.min(np.abs(np.subtract(a, b))) > margin for a, b in pairs)


# ----- building one function per case --------------------------------------------

@dataclass
class Built:
    """A case's graph compiled into one function `[*outs, cost, *grads]`."""
    inputs: list
    outs: list
    diff: list              # indices of the differentiated args
    fn: object
    weights: list           # fixed random weights fed for the cost
    states: list = field(default_factory=list)

    def __call__(self, values):
        # Stateful graphs (dropout counters) advance after every call; restore
        # them so each evaluation computes the same function of the inputs.
        for node, value in self.states:
            node.value = value
        res = [np.array(r) for r in self.fn(*values, *self.weights)]
        n = len(self.outs)
        return res[:n], float(res[n]), res[n + 1:]


def _cost_of(outs, dtype, rng, batch, prefix=""):
    """cost = sum_i sum(out_i * w_i) with w_i random inputs, so gradients are
    not trivially ones. Returns (cost, weight inputs, weight values)."""
    cost, w_inputs, w_values = None, [], []
    for i, out in enumerate(outs):
        o = out if out.dtype == dtype else bpc.cast(out, dtype)
        w = bpc.input(f"{prefix}weight{i}", out.shape, dtype=dtype)
        shape = tuple(batch if d is None else d for d in out.shape)
        w_inputs.append(w)
        w_values.append(rng.uniform(0.5, 1.5, shape).astype(dtype) * rng.choice([-1.0, 1.0], shape).astype(dtype))
        term = bpc.sum(o * w)
        cost = term if cost is None else cost + term
    return cost, w_inputs, w_values


def build_case(case, target, values, **options):
    """Compile the case (float64 inputs) on `target` as one function."""
    inputs = [bpc.input(a.name, a.shape, dtype=a.dtype) for a in case.args]
    outs = as_list(case.build(*inputs))
    rng = np.random.default_rng(zlib.crc32(case.id.encode()) + 1)
    cost, w_inputs, w_values = _cost_of(outs, np.dtype("float64"), rng, case.batch)
    diff = [i for i, a in enumerate(case.args) if a.is_float]
    grads = bpc.grad(cost, [inputs[i] for i in diff]) if diff else []
    fn = bpc.function(inputs + w_inputs, [*outs, cost, *grads], target=target, **options)
    states = [(n, np.array(n.value)) for n in topo_sort(outs) if n.kind == "state"]
    return Built(inputs, outs, diff, fn, w_values, states)


def finite_difference(built, values, index, eps, points=FD_POINTS, seed=0):
    """Central differences of the cost with respect to up to `points`
    elements of input `index`. Returns (flat element indices, derivatives)."""
    x = values[index]
    flat = x.reshape(-1)
    rng = np.random.default_rng(seed)
    picks = np.arange(flat.size) if flat.size <= points else np.sort(rng.choice(flat.size, points, replace=False))
    numeric = []
    for k in picks:
        old = flat[k]
        flat[k] = old + eps
        up = built(values)[1]
        flat[k] = old - eps
        down = built(values)[1]
        flat[k] = old
        numeric.append((up - down) / (2 * eps))
    return picks, np.array(numeric)


def check_op(case, target, **options):
    """Forward against the NumPy reference and gradients against central
    finite differences, all in float64 on `target`. Returns
    (values, outputs, grads) for further assertions."""
    values = case.sample()
    built = build_case(case, target, values, **options)
    outs, _, grads = built(values)

    expected = as_list(case.reference(*[v.copy() for v in values]))
    assert len(expected) == len(outs), f"{case.id}: reference gives {len(expected)} outputs, graph {len(outs)}"
    for k, (node, got, want) in enumerate(zip(built.outs, outs, expected)):
        want = np.asarray(want)
        where = f"{case.id}: output {k} ({node.op.name if node.op else node.kind})"
        assert got.shape == want.shape, f"{where}: shape {got.shape}, NumPy gives {want.shape}"
        assert got.dtype == node.dtype, f"{where}: dtype {got.dtype}, graph says {node.dtype}"
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=where)

    for i, g in zip(built.diff, grads):
        arg = case.args[i]
        where = f"{case.id}: gradient wrt {arg.name}"
        assert g.shape == values[i].shape, f"{where}: shape {g.shape}, input has {values[i].shape}"
        assert g.dtype == np.float64, f"{where}: dtype {g.dtype}"
        if case.zero_grad:
            assert np.all(g == 0.0), f"{where}: expected exact zeros, got {g}"
        if case.fd:
            picks, numeric = finite_difference(built, values, i, case.eps)
            np.testing.assert_allclose(g.reshape(-1)[picks], numeric, rtol=case.rtol, atol=case.atol,
                                       err_msg=f"{where} vs finite differences")
    return values, outs, grads


def check_float32(cases, target, rtol=1e-4, atol=2e-5):
    """Build every case twice, from float32 and from float64 inputs holding
    the same (float32-representable) values: the float32 graph compiled
    for `target` (all cases in ONE function), the float64 one run by the
    interpreter (the reference; the float64 tests hold every target to
    it). The float32 outputs, cost and gradients must stay float32 and agree
    with the float64 ones within float32 tolerances."""
    assert len({c.batch for c in cases}) == 1, "cases combined in one function must share a batch size"
    built = {dtype: ([], [], [], []) for dtype in ("float32", "float64")}   # feeds, inputs, results, layout
    for c, case in enumerate(cases):
        values = [v.astype(np.float32).astype(v.dtype) if v.dtype.kind == "f" else v for v in case.sample()]
        for dtype in ("float32", "float64"):
            feeds, inputs, results, layout = built[dtype]
            tag = f"c{c}_{dtype[-2:]}_"
            ins = [bpc.input(tag + a.name, a.shape, dtype=dtype if a.is_float else a.dtype) for a in case.args]
            outs = as_list(case.build(*ins))
            weights_rng = np.random.default_rng(c)   # the same weights for both dtypes
            cost, w_in, w_val = _cost_of(outs, np.dtype(dtype), weights_rng, case.batch, prefix=tag)
            grads = bpc.grad(cost, [ins[i] for i, a in enumerate(case.args) if a.is_float])
            names = [f"output {k}" for k in range(len(outs))] + ["cost"] + [
                f"gradient wrt {a.name}" for a in case.args if a.is_float]
            layout.append((case.id, len(results), names))
            results += outs + [cost] + grads
            inputs += ins + w_in
            feeds += [v.astype(dtype) if v.dtype.kind == "f" else v for v in values] + w_val
    got = {}
    for dtype, where in (("float32", target), ("float64", "interpret")):
        feeds, inputs, results, _ = built[dtype]
        got[dtype] = [np.asarray(r) for r in bpc.function(inputs, results, target=where)(*feeds)]
    for (cid, start32, names), (_, start64, _) in zip(built["float32"][3], built["float64"][3]):
        for k, name in enumerate(names):
            r32, r64 = got["float32"][start32 + k], got["float64"][start64 + k]
            what = f"{cid}: {name}"
            if r64.dtype.kind == "f":
                assert r32.dtype == np.float32, f"{what}: a float32 graph produced {r32.dtype}"
            scale = max(1.0, float(np.max(np.abs(r64)))) if r64.size else 1.0
            np.testing.assert_allclose(r32.astype(np.float64), r64, rtol=rtol, atol=atol * scale, err_msg=what)

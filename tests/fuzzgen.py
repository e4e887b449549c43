"""Random bpc programs for the differential fuzzer (test_fuzz.py), and the
code that runs them on a target and compares two runs.

A `Program` is made from a seed alone (`generate(seed, batches)`): its
graph, its initial param values and the values fed at every step. Programs
are built with the public API only, the way users write them:

* elementwise chains (unary and binary ops; exp, log, sqrt, pow and div on
  domains where they are finite), comparison masks, `where`, casts;
* broadcasting against scalars, rows, columns, size-1 axes and the batch
  dimension (None, usually first, sometimes elsewhere);
* reductions (sum, mean, max) over random axis sets (none, some, all),
  keepdims both ways; one value reduced twice over different axes, and a
  scalar used both inside a loop and after a reduction (`sum(x * s)` next
  to `sum(x) * s`), which stress how loops are fused and ordered;
* views: `x.T`, `bpc.transpose` with axes, `bpc.reshape` (also moving the
  batch axis), `bpc.broadcast_to`; 2-d matrix products, contracting over
  the batch dimension too;
* several outputs, among them views of params (`W.T`), views of computed
  values, inputs and params returned directly and one node returned twice;
* gradients of a scalar loss (`bpc.grad`) returned as outputs, random MLPs
  (widths from {1, 2, 3, 5}) with every gradient returned, optimizers;
* updates that read each other (`{A: B, B: A}`, `{A: A - 1, B: A}`), update
  values that are views or also outputs, one value updating two params;
* user names drawn from sets that collide with what code generators emit
  (`x_b` next to `b`, `i0`, `np`, `return`, `µ` next to `μ`, `σ²`, spaces).

Every program is checked on the interpreter while it is generated: a draw
whose values are not all finite is replaced (deterministically) by the next.
"""
import math
from dataclasses import dataclass, field, replace

import numpy as np

import bpc
from bpc.errors import ShapeError
from bpc.graph.traverse import topo_sort
from bpc.ops.core import broadcast_shapes

# ----- names ---------------------------------------------------------------------

# bpc.input takes any Python identifier (keywords included); these collide
# with names that code generators like to emit, or normalize (NFKC) to the
# same Python identifier as another entry (µ/μ, ﬁ/fi, ª/a, ℌ/H).
TRICKY_IDENTIFIERS = [
    "x", "b", "x_b", "p_b", "in_x", "c_x", "v_b", "e_x", "i0", "i1", "N", "n", "math", "np", "numba",
    "cuda", "return", "lambda", "None", "True", "def", "import", "float32", "float64", "int64", "range",
    "prange", "njit", "step", "step_serial", "step_parallel", "b0", "b1", "b2", "k0", "acc_sum3",
    "add4", "tanh5", "TILE", "lane", "rt", "o", "r", "s", "t", "_", "__", "__builtins__", "self",
    "print", "abs", "max", "sum", "µ", "μ", "ﬁ", "fi", "ª", "a", "ℌ", "H", "名前", "x_x",
]
# bpc.param (and op nodes) take any string.
TRICKY_NAMES = TRICKY_IDENTIFIERS + [
    "σ²", "with space", "a-b", "1x", "", "x.y", "a'b", 'q"q', "back\\slash", "new\nline", "# hash",
    "tab\tname", "b ", " b", "W.T", "b[0]", "{}", "%s", "x+y", "\u2014", "x_b", "p_W", "W",
]


# ----- the program -----------------------------------------------------------------

@dataclass
class Program:
    """A generated program: a graph plus everything needed to run it."""
    seed: int
    kind: str                 # "expr" or "mlp"
    dtype: str                # its main float dtype
    inputs: list              # bpc.input tensors, in call order
    samplers: list            # per input: ("normal"|"unit"|"int"|"bool"|"labels", arg)
    outputs: list
    updates: list             # [(param or state, value)]
    leaves: list = field(default_factory=list)   # every param/state the program reaches
    init: list = field(default_factory=list)     # their initial values
    notes: list = field(default_factory=list)    # features the generator used

    def __post_init__(self):
        roots = list(self.outputs) + [v for _, v in self.updates] + [p for p, _ in self.updates]
        nodes = topo_sort(roots)
        if not self.leaves:
            self.leaves = [n for n in nodes if n.kind in ("param", "state")]
            self.init = [np.array(n.value) for n in self.leaves]
        # A float64 result may carry float32 rounding (a float32 param cast
        # up): compare the whole program at its least precise float dtype.
        self.precision = "float32" if any(n.dtype == np.float32 for n in nodes) else "float64"

    def reset(self):
        """Give every param and state its initial value (on every target)."""
        for leaf, value in zip(self.leaves, self.init):
            leaf.value = value

    def feeds(self, step, batch):
        """The arrays fed at `step` with batch size `batch`, one per input."""
        rng = np.random.default_rng([self.seed, 7, step, batch])
        out = []
        for t, (kind, arg) in zip(self.inputs, self.samplers):
            shape = tuple(batch if d is None else d for d in t.shape)
            if kind == "normal":
                v = rng.normal(0.0, 1.0, shape)
            elif kind == "unit":
                v = rng.uniform(0.0, 1.0, shape)
            elif kind == "int":
                v = rng.integers(-3, 4, shape)
            elif kind == "bool":
                v = rng.random(shape) < 0.5
            else:  # labels in [0, arg)
                v = rng.integers(0, arg, shape)
            out.append(np.asarray(v, dtype=t.dtype))
        return out

    def subset(self, outputs=None, updates=None):
        """The same program with only some outputs / updates (for shrinking;
        it keeps the params, their initial values and the precision)."""
        outs = self.outputs if outputs is None else [self.outputs[i] for i in outputs]
        ups = self.updates if updates is None else [self.updates[i] for i in updates]
        smaller = replace(self, outputs=outs, updates=ups)
        smaller.precision = self.precision
        return smaller

    def size(self):
        return len(topo_sort(list(self.outputs) + [v for _, v in self.updates]))

    def describe(self):
        """The program as text: bpc.to_text of every output and update value,
        then which is which."""
        roots = list(self.outputs) + [v for _, v in self.updates]
        try:
            text = bpc.to_text(roots)
        except Exception as e:  # the listing must never hide the real failure
            text = f"(to_text failed: {type(e).__name__}: {e})"
        lines = [f"program seed={self.seed} kind={self.kind} dtype={self.dtype} "
                 f"features={','.join(sorted(set(self.notes)))}", text,
                 "inputs: " + ", ".join(f"{t.name!r}{_fmt(t)}" for t in self.inputs),
                 "returns: " + ", ".join(repr(o.name) for o in self.outputs)]
        if self.updates:
            lines.append("updates: " + ", ".join(f"{p.name!r} <- {v.name!r}" for p, v in self.updates))
        return "\n".join(lines)


def _fmt(t):
    return f":{t.dtype.name}(" + ",".join("N" if d is None else str(d) for d in t.shape) + ")"


# ----- the generator -----------------------------------------------------------------

class _Skip(Exception):
    """This op does not apply to the operands drawn; draw another."""


def _size(shape, batch=6):
    return int(np.prod([batch if d is None else d for d in shape], dtype=np.int64))


def _factor(n, rng, max_rank):
    """A random list of dims whose product is n (size-1 dims sprinkled in)."""
    dims = []
    m = n
    while m > 1:
        divisors = [d for d in range(2, m + 1) if m % d == 0]
        d = int(rng.choice(divisors))
        dims.append(d)
        m //= d
    while len(dims) < max_rank and rng.random() < 0.3:
        dims.insert(int(rng.integers(0, len(dims) + 1)), 1)
    if len(dims) > max_rank:   # merge the tail
        head, tail = dims[:max_rank - 1], dims[max_rank - 1:]
        dims = head + [int(np.prod(tail))]
    return dims


class _Builder:
    """Draws one program. `small` keeps every dim <= 4 (for the CUDA simulator)."""

    def __init__(self, seed, rng, small, taken):
        self.seed, self.rng, self.small = seed, rng, small
        self.taken = set(taken)      # input names already used in the function
        self.dtype = str(rng.choice(["float32", "float64"]))
        self.other = "float64" if self.dtype == "float32" else "float32"
        self.inputs, self.samplers = [], []
        self.params = []
        self.pool = []               # values ops may use
        self.bound = {}              # node id -> rough bound of |value|
        self.low = {}                # node id -> a positive lower bound (0: none known)
        self.notes = []
        self.has_batch = False
        self.first_outputs = []      # outputs an op wants returned, in order, before the others

    # ----- helpers -----
    def chance(self, p):
        return self.rng.random() < p

    def pick(self, seq):
        return seq[int(self.rng.integers(0, len(seq)))]

    def dim(self):
        return int(self.pick((1, 2, 3, 4) if self.small else (1, 2, 3, 4, 5)))

    def add(self, node, bound, low=0.0):
        self.bound[node.id] = float(bound)
        self.low[node.id] = float(low)
        self.pool.append(node)
        return node

    def b(self, node):
        """A rough bound of |value| (of a node, a Python number or an array)."""
        if isinstance(node, bpc.Tensor):
            return self.bound.get(node.id, 1e6)
        return float(np.max(np.abs(node), initial=0.0))

    def lo(self, node):
        return self.low.get(node.id, 0.0)

    def input_name(self, plain):
        name = self.pick(TRICKY_IDENTIFIERS) if self.chance(0.35) else plain
        base, k = name, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        if base != plain:
            self.notes.append("tricky-name")
        return name

    def param_name(self, plain):
        if self.chance(0.35):
            self.notes.append("tricky-name")
            existing = [t.name for t in self.inputs + self.params]
            return self.pick(TRICKY_NAMES + existing) if existing and self.chance(0.3) else self.pick(TRICKY_NAMES)
        return plain

    def shape(self, rank=None, batch=0.6):
        rank = int(self.pick((0, 1, 1, 2, 2, 2, 3, 3))) if rank is None else rank
        dims = [self.dim() for _ in range(rank)]
        if rank and self.chance(batch):
            dims[0 if self.chance(0.85) else int(self.rng.integers(0, rank))] = None
        return tuple(dims)

    def new_input(self, shape, dtype=None, sampler=("normal", None), plain=None):
        dtype = dtype or self.dtype
        t = bpc.input(self.input_name(plain or f"x{len(self.inputs)}"), shape, dtype=dtype)
        self.inputs.append(t)
        self.samplers.append(sampler)
        if None in shape:
            self.has_batch = True
        return self.add(t, 4.5 if sampler[0] == "normal" else 3.0)

    def new_param(self, shape, dtype=None, scale=0.7, plain=None):
        dtype = dtype or self.dtype
        value = self.rng.normal(0.0, scale, shape).astype(dtype)
        p = bpc.param(self.param_name(plain or f"W{len(self.params)}"), value, dtype=dtype)
        self.params.append(p)
        return self.add(p, 3 * scale + 1.0)

    def new_leaf(self, shape):
        """An input (always when the shape has the batch dim) or a param."""
        dtype = self.other if self.chance(0.06) else self.dtype
        if dtype != self.dtype:
            self.notes.append("mixed-dtype")
        if None in shape or self.chance(0.45):
            return self.new_input(shape, dtype)
        return self.new_param(shape, dtype)

    def floats(self):
        return [n for n in self.pool if n.dtype.kind == "f"]

    def operand(self):
        """A float value of the pool, mostly a recent one (so chains grow)."""
        cands = self.floats()
        if not cands:
            raise _Skip()
        if self.chance(0.6):
            return cands[-1 - int(self.rng.integers(0, min(4, len(cands))))]
        return self.pick(cands)

    def tame(self, x):
        """x, or tanh(x) when x may be too large for what comes next."""
        if self.b(x) > 30.0:
            return self.add(bpc.tanh(x), 1.0)
        return x

    def broadcast_variant(self, shape):
        """A shape that broadcasts with `shape` (fewer leading axes, size-1 axes,
        an expanded size-1 axis, or an extra leading axis)."""
        dims = list(shape)
        if dims and self.chance(0.35):
            dims = dims[int(self.rng.integers(1, len(dims) + 1)):]
        dims = [1 if self.chance(0.3) else d for d in dims]
        dims = [self.dim() if d == 1 and self.chance(0.2) else d for d in dims]
        if len(dims) < 3 and self.chance(0.1):
            dims.insert(0, self.dim())
        return tuple(dims)

    def fits(self, *shapes):
        try:
            out = broadcast_shapes(*shapes)
        except ShapeError:
            return None
        if len(out) > 4 or _size(out) > 400:
            return None
        return out

    def partner(self, a, positive=False):
        """A second operand for `a`: a pool value, a new leaf, a Python scalar
        or a NumPy constant, broadcasting with a."""
        r = self.rng.random()
        if r < 0.5:
            cands = [n for n in self.floats() if n is not a and self.fits(a.shape, n.shape) is not None
                     and (not positive or self.lo(n) > 0.05)]
            if cands:
                return self.pick(cands)
        if positive:
            if self.chance(0.4):
                return float(self.rng.uniform(0.5, 2.0))
            base = self.partner(a)
            if not isinstance(base, bpc.Tensor):
                return float(self.rng.uniform(0.5, 2.0))
            self.notes.append("safe-domain")
            return self.add(bpc.abs(base) + 0.5, self.b(base) + 0.5, 0.5)
        if r < 0.75:
            shape = self.broadcast_variant(a.shape)
            if self.fits(a.shape, shape) is None:
                shape = a.shape
            if None in shape and not self.has_batch:
                shape = tuple(1 if d is None else d for d in shape)
            return self.new_leaf(shape)
        if r < 0.9:
            self.notes.append("scalar")
            return float(self.rng.choice([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 3.0, 0.25]))
        shape = tuple(1 if d is None else d for d in self.broadcast_variant(a.shape))
        if self.fits(a.shape, shape) is None:
            shape = ()
        self.notes.append("numpy-constant")
        return np.asarray(self.rng.normal(0.0, 1.0, shape), dtype=self.dtype)

    # ----- ops -----
    def op_unary(self):
        a = self.operand()
        ba, la = self.b(a), self.lo(a)
        kind = self.pick(["neg", "exp", "log", "sqrt", "abs", "square", "tanh", "sigmoid", "relu",
                          "leaky_relu", "softplus", "sign", "clip", "stop_gradient", "pow", "named"])
        self.notes.append(kind)
        if kind == "neg":
            return self.add(-a, ba, 0.0)
        if kind == "exp":
            a = self.tame(a) if self.b(a) > 15 else a
            return self.add(bpc.exp(a), math.exp(min(self.b(a), 30.0)), math.exp(-min(self.b(a), 30.0)))
        if kind == "log":
            if la > 1e-3:
                return self.add(bpc.log(a), max(abs(math.log(la)), math.log(max(ba, 1.0))) + 1.0)
            c = float(self.pick([0.25, 0.5, 1.0]))
            form = self.pick(["square", "abs", "softplus"])
            self.notes.append("safe-domain")
            inner = {"square": bpc.square, "abs": bpc.abs, "softplus": bpc.softplus}[form](a) + c
            return self.add(bpc.log(inner), abs(math.log(c)) + math.log(ba * ba + 2.0) + 1.0)
        if kind == "sqrt":
            if la > 1e-3:
                return self.add(bpc.sqrt(a), math.sqrt(ba), math.sqrt(la))
            self.notes.append("safe-domain")
            return self.add(bpc.sqrt(bpc.abs(a) + 0.1), math.sqrt(ba + 0.1), 0.3)
        if kind == "abs":
            return self.add(bpc.abs(a), ba, la)
        if kind == "square":
            a = self.tame(a)
            return self.add(bpc.square(a), self.b(a) ** 2, self.lo(a) ** 2)
        if kind == "tanh":
            return self.add(bpc.tanh(a), 1.0)
        if kind == "sigmoid":
            return self.add(bpc.sigmoid(a), 1.0, 1.0 / (1.0 + math.exp(min(ba, 30.0))) if ba < 30 else 0.0)
        if kind == "relu":
            return self.add(bpc.relu(a), ba)
        if kind == "leaky_relu":
            return self.add(bpc.leaky_relu(a, float(self.pick([0.01, 0.2, 0.5]))), ba)
        if kind == "softplus":
            return self.add(bpc.softplus(a), ba + 1.0)
        if kind == "sign":
            return self.add(bpc.sign(a), 1.0)
        if kind == "clip":
            lo = float(self.rng.uniform(-1.5, 0.0))
            return self.add(bpc.clip(a, lo, lo + float(self.rng.uniform(0.5, 2.0))), 2.0)
        if kind == "stop_gradient":
            return self.add(bpc.stop_gradient(a), ba, la)
        if kind == "pow":
            e = float(self.pick([2.0, 3.0, 0.5, -1.0, 1.5, -0.5]))
            if e in (2.0, 3.0) and self.chance(0.3):   # integral exponents of any base
                a = self.tame(a)
                return self.add(a ** e, self.b(a) ** e)
            if la < 0.05:
                self.notes.append("safe-domain")
                a = self.add(bpc.abs(self.tame(a)) + 0.5, self.b(self.tame(a)) + 0.5, 0.5)
            a = self.tame(a) if e > 0 else a
            ba, la = self.b(a), self.lo(a)
            return self.add(a ** e, ba ** e if e > 0 else la ** e, la ** e if e > 0 else ba ** e)
        # a unary op with a user name (names must never reach generated code)
        name = self.pick(TRICKY_NAMES)
        self.notes.append("named-node")
        return self.add(bpc.tanh(a, name=name), 1.0)

    def op_binary(self):
        a = self.operand()
        kind = self.pick(["add", "sub", "mul", "div", "rsub", "maximum", "minimum", "pow", "radd"])
        self.notes.append(kind)
        if kind == "div":
            d = self.partner(a, positive=True)
            if isinstance(d, bpc.Tensor):
                return self.add(a / d, self.b(a) / self.lo(d), 0.0)
            return self.add(a / d if self.chance(0.5) else a / -d, self.b(a) / abs(d))
        if kind == "pow":   # positive base, bounded exponent
            base = self.partner(a, positive=True)
            if not isinstance(base, bpc.Tensor):
                raise _Skip()
            e = self.add(bpc.tanh(a), 1.0)
            return self.add(base ** e, max(self.b(base), 1.0 / self.lo(base)) + 1.0, 0.0)
        c = self.partner(a)
        bc = self.b(c)
        if kind in ("add", "radd"):
            out = a + c if kind == "add" else c + a
            return self.add(out, self.b(a) + bc)
        if kind in ("sub", "rsub"):
            return self.add(a - c if kind == "sub" else c - a, self.b(a) + bc)
        if kind == "mul":
            a = self.tame(a)
            if isinstance(c, bpc.Tensor):
                c = self.tame(c)
                bc = self.b(c)
            return self.add(a * c, self.b(a) * bc)
        out = bpc.maximum(a, c) if kind == "maximum" else bpc.minimum(a, c)
        return self.add(out, max(self.b(a), bc))

    def op_compare(self):
        a = self.operand()
        c = self.partner(a)
        cmp = self.pick([bpc.less, bpc.greater, bpc.less_equal, bpc.greater_equal, bpc.equal, bpc.not_equal])
        self.notes.append("mask")
        if isinstance(c, bpc.Tensor) or self.chance(0.5):
            mask = cmp(a, c)
        else:
            mask = self.pick([lambda: a > c, lambda: a < c, lambda: a >= c, lambda: a <= c])()
        self.add(mask, 1.0)
        if self.chance(0.4):
            return mask          # the mask is a value of its own
        x = self.operand()
        if self.chance(0.5) and self.fits(mask.shape, x.shape) is not None:
            self.notes.append("where")
            y = self.partner(x)
            shape = self.fits(mask.shape, x.shape, getattr(y, "shape", ()))
            if shape is None:
                raise _Skip()
            return self.add(bpc.where(mask, x, y), max(self.b(x), self.b(y)))
        if self.fits(mask.shape, x.shape) is None:
            raise _Skip()
        return self.add(mask * x, self.b(x))

    def axes(self, ndim):
        """(axis argument, reduced axes): random subsets, None, ints, negatives, ()."""
        chosen = [i for i in range(ndim) if self.chance(0.5)]
        r = self.rng.random()
        if r < 0.12:
            return None, list(range(ndim))
        if r < 0.17:
            self.notes.append("empty-axes")
            return (), []
        if not chosen and ndim:
            chosen = [int(self.rng.integers(0, ndim))]
        spelled = [a - ndim if self.chance(0.3) else a for a in chosen]
        if self.chance(0.3):
            self.rng.shuffle(spelled)
        if len(spelled) == 1 and self.chance(0.6):
            return spelled[0], chosen
        return tuple(spelled), chosen

    def op_reduce(self):
        a = self.operand()
        kind = self.pick(["sum", "mean", "max"])
        axis, chosen = self.axes(a.ndim)
        keep = self.chance(0.5)
        self.notes.append(f"{kind}-keepdims" if keep else kind)
        fn = {"sum": bpc.sum, "mean": bpc.mean, "max": bpc.max}[kind]
        if self.chance(0.2):   # the method spelling
            out = getattr(a, kind)(axis=axis, keepdims=keep)
        else:
            out = fn(a, axis=axis, keepdims=keep)
        n = _size([a.shape[i] for i in chosen])
        return self.add(out, self.b(a) * (n if kind == "sum" else 1), self.lo(a) if kind != "max" else 0.0)

    def op_view(self):
        a = self.operand()
        kind = self.pick(["reshape", "reshape", "transpose", "T", "broadcast_to"])
        self.notes.append(kind)
        if kind == "reshape":
            if a.shape.count(None) > 1:
                # (N, N) values come from broadcasting; they reshape only to
                # shapes holding N twice (a ShapeError otherwise), and
                # `reshaped` makes shapes with one N: leave them be.
                raise _Skip()
            out = bpc.reshape(a, self.reshaped(a.shape))
        elif kind == "T":
            out = a.T
        elif kind == "transpose":
            if a.ndim < 2:
                raise _Skip()
            perm = [int(i) for i in self.rng.permutation(a.ndim)]
            if self.chance(0.3):
                perm = [p - a.ndim for p in perm]
            out = bpc.transpose(a, tuple(perm))
        else:
            dims = [self.dim() if d == 1 and self.chance(0.6) else d for d in a.shape]
            if self.has_batch and 1 in a.shape and self.chance(0.2):
                dims[a.shape.index(1)] = None
            if len(dims) < 4 and self.chance(0.4):
                dims.insert(0, None if self.has_batch and None not in dims and self.chance(0.3) else self.dim())
            if self.fits(tuple(dims)) is None:
                raise _Skip()
            out = bpc.broadcast_to(a, tuple(dims))
        return self.add(out, self.b(a), self.lo(a))

    def reshaped(self, shape, infer=True):
        """A new shape with the same number of elements (the batch dim may
        move; with `infer`, one dim may be spelled -1)."""
        static = _size([d for d in shape if d is not None])
        dims = _factor(static, self.rng, 3)
        if None in shape:
            pos = shape.index(None) if self.chance(0.6) else int(self.rng.integers(0, len(dims) + 1))
            pos = min(pos, len(dims))
            dims.insert(pos, None)
            if pos != shape.index(None):
                self.notes.append("reshape-moves-batch")
        out = [d for d in dims]
        statics = [i for i, d in enumerate(out) if d is not None]
        if infer and statics and self.chance(0.25):
            out[self.pick(statics)] = -1
        if not out and self.chance(0.5):
            out = [1]
        return tuple(out)

    def op_matmul(self):
        twos = [n for n in self.floats() if n.ndim == 2]
        if not twos or self.chance(0.2):
            a = self.operand()
            if a.ndim != 2:
                if a.shape.count(None) > 1:
                    raise _Skip()
                a = self.add(bpc.reshape(a, self.two_d(a.shape)), self.b(a), self.lo(a))
        else:
            a = self.pick(twos)
        a = self.tame(a)
        m, k = a.shape
        form = self.pick(["param", "paramT", "aT", "pool"])
        self.notes.append("matmul-" + form)
        if form == "aT":                      # a.T @ c: contracts over a's rows (the batch, often)
            cands = [n for n in twos if n.shape[0] == m]
            c = self.tame(self.pick(cands)) if cands and self.chance(0.6) else self.new_leaf((m, self.dim()))
            return self.add(a.T @ c, self.b(a) * self.b(c) * 6, 0.0)
        if form == "pool":
            cands = [n for n in twos if n.shape[0] == k]
            if cands:
                c = self.tame(self.pick(cands))
                return self.add(bpc.matmul(a, c), self.b(a) * self.b(c) * 6, 0.0)
        if k is None:
            c = self.new_input((None, self.dim()))
            return self.add(a @ c, self.b(a) * self.b(c) * 6)
        if form == "paramT":
            w = self.new_param((self.dim(), k), scale=0.5)
            return self.add(a @ w.T, self.b(a) * self.b(w) * k)
        w = self.new_leaf((k, self.dim()))
        return self.add(a @ w, self.b(a) * self.b(w) * k)

    def two_d(self, shape):
        static = _size([d for d in shape if d is not None])
        if None in shape:
            return (None, static) if self.chance(0.7) else (static, None)
        dims = _factor(static, self.rng, 2)
        return tuple(dims + [1] * (2 - len(dims))) if len(dims) < 2 else tuple(dims)

    def op_bmm(self):
        """A stack of matrices (rank 3 or 4) times a matrix or another stack
        whose leading dimensions broadcast: the folded product + batch sum
        of the weight's gradient, the per-matrix loop, vectors."""
        a = self.tame(self.operand())
        if a.ndim < 3 or a.shape[-1] is None or a.shape[-2] is None:   # few values have rank 3: make one
            a = self.new_leaf((None if self.has_batch else self.dim(), self.dim(), self.dim()))
        k = a.shape[-1]
        form = self.pick(["weight", "stack", "vector"])
        self.notes.append("bmm-" + form)
        if form == "weight":
            w = self.new_param((k, self.dim()), scale=0.5)
            return self.add(a @ w, self.b(a) * self.b(w) * k)
        if form == "vector":
            v = self.new_leaf((k,))
            return self.add(a @ v, self.b(a) * self.b(v) * k)
        lead = tuple(1 if d is None or self.chance(0.4) else d for d in a.shape[:-2])
        c = self.new_leaf(lead + (k, self.dim()))
        return self.add(a @ c, self.b(a) * self.b(c) * k)

    def op_index(self):
        """Basic slicing (ints, steps, negative bounds, None), or concat and
        stack of a value with a slice or a copy of itself."""
        a = self.operand()
        statics = [i for i, d in enumerate(a.shape) if d is not None and d > 1]
        if not statics:
            raise _Skip()
        axis = self.pick(statics)
        d = a.shape[axis]
        r = self.rng.random()
        if r < 0.55:
            key = []
            for i, n in enumerate(a.shape):
                if n is None or (i != axis and self.chance(0.6)):
                    key.append(slice(None))
                elif self.chance(0.25):
                    key.append(int(self.rng.integers(-n, n)))
                else:
                    start = int(self.rng.integers(-n, n))
                    key.append(slice(start, None, self.pick([1, 1, 2, -1])))
            if self.chance(0.2):
                key.insert(int(self.rng.integers(0, len(key) + 1)), None)
            self.notes.append("getitem")
            return self.add(a[tuple(key)], self.b(a), self.lo(a))
        piece = a[(slice(None),) * axis + (slice(0, int(self.rng.integers(1, d))),)]
        if r < 0.85:
            self.notes.append("concat")
            return self.add(bpc.concat([piece, a] if self.chance(0.5) else [a, piece], axis=axis), self.b(a),
                            self.lo(a))
        self.notes.append("stack")
        return self.add(bpc.stack([a, a * 0.5], axis=int(self.rng.integers(0, a.ndim + 1))), self.b(a))

    def op_scan(self):
        """A loop over a static axis of a value: a carry mixed with each
        slice and a weight (a closure), forward or reverse, its final carry
        and its stacked outputs (one of them a second output, or none)."""
        a = self.tame(self.operand())
        statics = [i for i, d in enumerate(a.shape) if d is not None and 1 < d <= 6]
        if not statics:
            raise _Skip()
        axis = self.pick(statics)
        per = a.shape[:axis] + a.shape[axis + 1:]
        w = self.new_param(tuple(1 if d is None else d for d in per), scale=0.5)
        init = a[(slice(None),) * axis + (0,)] * 0.3
        form = self.pick(["one", "two", "none"])

        def step(c, x):
            h = bpc.tanh(c * 0.5 + x * w)
            return h, (h * 2.0 if form == "one" else (h, bpc.sum(h * x)) if form == "two" else None)
        self.notes.append("scan")
        carry, ys = bpc.scan(step, init, a, axis=axis, reverse=self.chance(0.4))
        self.add(carry, 1.0)
        if form == "one":
            return self.add(ys, 2.0)
        if form == "two":
            self.add(ys[0], 1.0)
            return self.add(ys[1], 1.0 * max(1, _size(per)) * self.b(a))
        return carry

    def op_softmax(self):
        a = self.operand()
        if a.ndim == 0:
            raise _Skip()
        axis = int(self.rng.integers(-a.ndim, a.ndim))
        fn = self.pick([bpc.softmax, bpc.log_softmax])
        self.notes.append(fn.__name__)
        a = self.tame(a)
        return self.add(fn(a, axis=axis), self.b(a) * 2 + 10.0)

    def op_fanout(self):
        """A value used inside a loop and again after a reduction
        (`sum(x * s)` next to `sum(x) * s`): shared scalars stress how
        kernels are fused and ordered."""
        x = self.tame(self.operand())
        small = [n for n in self.floats() if n.op is not None and _size(n.shape) == 1
                 and n.ndim <= x.ndim and n.id != x.id]
        if small and self.chance(0.6):
            s = self.tame(self.pick(small))
        else:
            base = self.pick(self.floats())
            s = self.add(self.pick([bpc.exp(bpc.tanh(bpc.mean(base))), bpc.max(base) * 0.5]), 3.0)
            s = self.tame(s)
        axis, chosen = self.axes(x.ndim)
        keep = self.chance(0.5)
        fn = self.pick([bpc.sum, bpc.max, bpc.mean])
        self.notes.append("fanout")
        n = _size([x.shape[i] for i in chosen])
        self.add(fn(x * s, axis=axis, keepdims=keep), self.b(x) * self.b(s) * n)
        # * 1.25: the two would be equal up to rounding, and a comparison (or
        # maximum, relu, ...) of them would amplify the rounding of one target
        # into a difference that is no bug.
        return self.add(fn(x, axis=axis, keepdims=keep) * (s * 1.25), self.b(x) * self.b(s) * n * 1.25)

    def op_reduce_twice(self):
        """Two reductions of one computed value over different axis sets, one
        of them through a product with another value (reductions fused
        into one loop nest must agree on its axes)."""
        x = self.tame(self.operand())
        if x.ndim == 0:
            raise _Skip()
        other = self.partner(x)
        if not isinstance(other, bpc.Tensor) or self.fits(x.shape, other.shape) != x.shape:
            other = x
        other = self.add(bpc.exp(bpc.tanh(other)), 3.0, 0.3)   # a loop of its own, made first
        d = self.add(x - 0.5, self.b(x) + 0.5)
        self.notes.append("reduce-twice")
        (a1, _), (a2, _) = self.axes(x.ndim), self.axes(x.ndim)
        f1, f2 = self.pick([bpc.sum, bpc.max, bpc.mean]), self.pick([bpc.sum, bpc.max, bpc.mean])
        r1 = self.add(f1(d * d, axis=a1, keepdims=self.chance(0.5)), (self.b(d) ** 2) * _size(x.shape))
        r2 = self.add(f2(other * d, axis=a2, keepdims=self.chance(0.5)), self.b(d) * 3.0 * _size(x.shape))
        if self.chance(0.5):   # returned in this order, so `other` is computed first
            self.first_outputs += [other, r1, r2]
        return r2

    def op_cast(self):
        a = self.operand()
        self.notes.append("cast")
        other = self.other if a.dtype.name == self.dtype else self.dtype
        return self.add(bpc.cast(a, other), self.b(a), self.lo(a))

    def op_int(self):
        """Integer (and bool) inputs: integer arithmetic and sums, casts to float."""
        shape = self.shape(rank=int(self.pick((1, 2))))
        if None in shape and not self.has_batch and self.chance(0.5):
            shape = tuple(1 if d is None else d for d in shape)
        if self.chance(0.15):
            self.notes.append("bool-input")
            m = self.new_input(shape, "bool", ("bool", None), plain=f"m{len(self.inputs)}")
            x = self.operand()
            if self.fits(m.shape, x.shape) is None:
                raise _Skip()
            return self.add(bpc.where(m, x, 0.0), self.b(x))
        dt = self.pick(["int64", "int32"])
        self.notes.append("int-input")
        i = self.new_input(shape, dt, ("int", None), plain=f"k{len(self.inputs)}")
        r = self.rng.random()
        if r < 0.35:
            j = i * 2 + i if self.chance(0.5) else bpc.maximum(i, -i) - 1
            return self.add(bpc.sum(j, axis=self.axes(j.ndim)[0]), 100.0)
        return self.add(bpc.cast(i, self.dtype), 3.0)

    OPS = [("unary", 24), ("binary", 26), ("compare", 8), ("reduce", 14), ("view", 14),
           ("matmul", 9), ("bmm", 3), ("index", 5), ("softmax", 2), ("cast", 2), ("int", 2), ("fanout", 5),
           ("reduce_twice", 4), ("scan", 2)]

    def grow(self, n_ops):
        names, weights = zip(*self.OPS)
        p = np.array(weights, dtype=float) / sum(weights)
        done = tries = 0
        while done < n_ops and tries < 6 * n_ops:
            tries += 1
            op = names[int(self.rng.choice(len(names), p=p))]
            try:
                getattr(self, "op_" + op)()
                done += 1
            except _Skip:
                pass
            except ShapeError:   # a combination the shape rules refuse: draw another
                pass

    # ----- outputs, loss, gradients, updates -----
    def outputs(self, computed):
        outs = list(self.first_outputs)
        later = computed[len(computed) // 2:] or computed
        for _ in range(int(self.rng.integers(1, 4))):
            outs.append(self.pick(later) if self.chance(0.7) else self.pick(computed))
        if self.chance(0.25) and self.params:
            p = self.pick(self.params)
            outs.append(p.T if p.ndim >= 2 and self.chance(0.6) else bpc.reshape(p, (-1,)) if p.ndim != 1 else p)
            self.notes.append("output-param-view")
        if self.chance(0.25) and computed:
            c = self.pick(computed)
            if c.shape.count(None) > 1 or (c.ndim >= 2 and self.chance(0.5)):
                outs.append(c.T)
            else:
                outs.append(bpc.reshape(c, self.reshaped(c.shape)))
            self.notes.append("output-intermediate-view")
        if self.chance(0.15) and self.params:
            outs.append(self.pick(self.params))
            self.notes.append("output-param")
        if self.chance(0.15):
            outs.append(self.pick(self.inputs))
            self.notes.append("output-input")
        if self.chance(0.15):
            outs.append(self.pick(outs))
            self.notes.append("output-twice")
        if self.chance(0.03):
            outs.append(bpc.constant(self.rng.normal(size=(2,)).astype(self.dtype)))
            self.notes.append("output-constant")
        return outs

    def loss(self, computed):
        """A scalar loss of values that depend on params, or None."""
        reach = {p.id for p in self.params}
        deps = []
        for n in topo_sort(computed):
            if n.op is not None and any(i.id in reach for i in n.inputs):
                reach.add(n.id)
        deps = [n for n in computed if n.id in reach and n.dtype.kind == "f"]
        if not deps:
            return None
        terms = []
        for n in [self.pick(deps) for _ in range(int(self.rng.integers(1, 3)))]:
            n = self.tame(n)
            form = self.pick(["sum", "mean-square", "sum-tanh", "max", "weighted"])
            if form == "sum":
                t = bpc.sum(n)
            elif form == "mean-square":
                t = bpc.mean(bpc.square(n))
            elif form == "sum-tanh":
                t = bpc.sum(bpc.tanh(n)) * 0.5
            elif form == "max":
                t = bpc.max(n)
            else:
                w = tuple(1 if d is None else d for d in n.shape)
                t = bpc.sum(n * np.asarray(self.rng.normal(size=w), dtype=n.dtype))
            terms.append(t if t.dtype.name == self.dtype else bpc.cast(t, self.dtype))
        loss = terms[0]
        for t in terms[1:]:
            loss = loss + t
        return loss

    def updates(self, grads, outs):
        """Random update patterns; each param is updated at most once."""
        ups = {}
        free = [p for p in self.params]
        self.rng.shuffle(free)

        def take(shape=None):   # (tensors compare elementwise: find them by index)
            for i, p in enumerate(free):
                if shape is None or p.shape == shape:
                    return free.pop(i)
            return None

        def twin(p):   # a free param with p's shape, made if needed
            q = take(p.shape)
            if q is None:
                q = self.new_param(p.shape, p.dtype.name, plain=f"V{len(self.params)}")
            return q

        for _ in range(int(self.rng.integers(1, 4))):
            a = take()
            if a is None:
                break
            kind = self.pick(["sgd", "swap", "chain", "view", "expr", "self", "shared", "cross", "pure-view"])
            if kind == "sgd" and a.id in grads:
                ups[a] = a - 0.1 * grads[a.id]
            elif kind == "swap":
                b = twin(a)
                ups[a], ups[b] = b, a
            elif kind == "chain":          # the target-network pattern
                b = twin(a)
                ups[a], ups[b] = a - 1.0, a
            elif kind == "view" and a.ndim >= 2:
                src = self.new_param(tuple(reversed(a.shape)), a.dtype.name, plain=f"A{len(self.params)}")
                ups[a] = bpc.transpose(src + 1.0)
                if self.chance(0.5):
                    ups[src] = src * 0.5
            elif kind == "view":
                src = self.new_param(self.reshaped(a.shape, infer=False) if a.ndim else (1,), a.dtype.name,
                                     plain=f"A{len(self.params)}")
                ups[a] = bpc.reshape(src * 2.0, a.shape)
            elif kind == "pure-view" and a.ndim >= 2:
                src = self.new_param(tuple(reversed(a.shape)), a.dtype.name, plain=f"A{len(self.params)}")
                ups[a], ups[src] = src.T, a.T
            elif kind == "shared":
                b = twin(a)
                v = a * 0.5 + b
                ups[a], ups[b] = v, v
            elif kind == "cross":          # each reads the other
                b = twin(a)
                ups[a], ups[b] = b * 2.0 + a, a + 1.0
            elif kind == "self":
                ups[a] = a
            else:
                src = self.pick(self.floats())
                s = bpc.mean(src) if src.dtype.kind == "f" else bpc.cast(bpc.sum(src), a.dtype)
                ups[a] = a * 0.9 + 0.1 * bpc.tanh(bpc.cast(s, a.dtype))
            self.notes.append("update-" + kind)
        for p, v in list(ups.items()):
            if v.dtype != p.dtype:
                ups[p] = bpc.cast(v, p.dtype)
        if ups and self.chance(0.3):
            outs.append(self.pick(list(ups.values())))
            self.notes.append("update-is-output")
        return list(ups.items())

    # ----- the two kinds of program -----
    def expr_program(self):
        for _ in range(int(self.rng.integers(1, 3))):
            self.new_input(self.shape())
        for _ in range(int(self.rng.integers(0, 3))):
            self.new_param(self.shape(batch=0.0))
        first = len(self.pool)
        # Many small programs (cheap to compile: compile time grows with the
        # number of loop nests) and some longer chains.
        self.grow(int(self.rng.integers(1, 4)) if self.chance(0.4) else int(self.rng.integers(3, 9)))
        computed = [n for n in self.pool[first:] if n.op is not None] or self.pool[:]
        outs = self.outputs(computed)
        grads = {}
        if self.params and self.chance(0.55):
            loss = self.loss(computed)
            if loss is not None:
                wrt = [p for p in self.params if self.chance(0.8)] or self.params[:1]
                if self.chance(0.2):
                    wrt += [t for t in self.inputs if t.dtype.kind == "f"][:1]
                gs = bpc.grad(loss, wrt)
                grads = {w.id: g for w, g in zip(wrt, gs)}
                outs += [loss] + [g for g in gs if self.chance(0.85)]
                self.notes.append("grad")
        ups = self.updates(grads, outs) if self.params and self.chance(0.6) else []
        return outs, ups

    def mlp_program(self):
        widths = [int(self.pick((1, 2, 3, 4) if self.small else (1, 2, 3, 5)))
                  for _ in range(int(self.rng.integers(2, 5)))]
        x = self.new_input((None, widths[0]), plain="x")
        params, h, hidden = [], x, []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            W = self.new_param((a, b), scale=1.0 / math.sqrt(a), plain=f"W{i + 1}")
            c = self.new_param((b,), scale=0.3 if self.chance(0.5) else 0.0, plain=f"b{i + 1}")
            params += [W, c]
            form = self.rng.random()
            if form < 0.15:
                z = (W.T @ h.T).T + c
                self.notes.append("mlp-transposed")
            else:
                z = h @ W + c if form < 0.85 else c + bpc.matmul(h, W)
            if i < len(widths) - 2:
                act = self.pick(["relu", "tanh", "sigmoid", "leaky_relu", "softplus", "none"])
                h = z if act == "none" else (bpc.leaky_relu(z, 0.1) if act == "leaky_relu" else getattr(bpc, act)(z))
                if self.chance(0.1):
                    h = bpc.dropout(h, 0.3, seed=int(self.rng.integers(0, 100)))
                    self.notes.append("dropout")
                hidden.append(h)
            else:
                h = z
        out = h
        kind = self.pick(["mse", "sse", "xent", "bce", "mean"])
        if kind == "xent" and widths[-1] < 2:
            kind = "mse"
        self.notes.append("loss-" + kind)
        if kind == "xent":
            y = self.new_input((None,), "int64", ("labels", widths[-1]), plain="y")
            loss = bpc.softmax_cross_entropy(out, y)
        elif kind == "bce":
            y = self.new_input((None, widths[-1]), sampler=("unit", None), plain="y")
            loss = bpc.binary_cross_entropy_with_logits(out, y)
        elif kind in ("mse", "sse"):
            y = self.new_input((None, widths[-1]), plain="y")
            loss = bpc.mse(out, y) if kind == "mse" else bpc.sum(bpc.square(out - y))
        else:
            loss = bpc.mean(out)
        grads = bpc.grad(loss, params)
        outs = [loss, out] + list(grads)
        if self.chance(0.3):
            self.rng.shuffle(outs)
        if hidden and self.chance(0.3):
            outs.append(self.pick(hidden))
        if self.chance(0.2):
            outs.append(params[0].T)
            self.notes.append("output-param-view")
        r = self.rng.random()
        ups = []
        if r < 0.4:
            ups = [(p, p - 0.1 * g) for p, g in zip(params, grads)]
            self.notes.append("update-sgd")
        elif r < 0.55:
            opt = bpc.optim.SGD(lr=0.05, momentum=0.9) if self.chance(0.5) else bpc.optim.Adam(lr=0.01)
            ups = list(opt.updates(loss, params).items())
            self.notes.append("optimizer")
        self.params = params
        return outs, ups

    def build(self):
        kind = "mlp" if self.chance(0.3) else "expr"
        outs, ups = self.mlp_program() if kind == "mlp" else self.expr_program()
        self.notes.append(self.dtype)
        return Program(self.seed, kind, self.dtype, self.inputs, self.samplers, outs, ups,
                       notes=self.notes)


# ----- running and comparing ---------------------------------------------------------

def compile_pack(programs, target, **options):
    """ONE bpc.function running all the programs: their inputs, outputs and
    updates concatenated."""
    return bpc.function([t for p in programs for t in p.inputs],
                        [o for p in programs for o in p.outputs],
                        updates=[u for p in programs for u in p.updates], target=target, **options)


def run(programs, fns, batches, mixed=False):
    """Run compiled packs of the programs from their initial param values, one
    call per batch size, calling fns[step % len(fns)] at each step. Returns,
    per step, per program: (outputs as returned, copies of its params/state
    after the step).

    Outputs are kept as returned and compared only after the last step, so an
    output that aliases memory a later call overwrites is caught too; every
    call must leave the arrays fed to it untouched. With `mixed`, the calls
    pass keyword arguments, some as other array layouts holding the same
    values (`as_user_might_pass`), the user assigns each program's first
    param (`p.value = 0.5 * p.value + 0.25`) before step 1, and params are
    read only after the last step (so no read syncs them in between)."""
    for p in programs:
        p.reset()
    inputs = [t for p in programs for t in p.inputs]
    steps = []
    for step, batch in enumerate(batches):
        if mixed and step == 1:
            for p in programs:
                first = next((leaf for leaf in p.leaves if leaf.kind == "param"), None)
                if first is not None:
                    first.value = 0.5 * first.value + 0.25
        feeds = [f for p in programs for f in p.feeds(step, batch)]
        if mixed:
            rng = np.random.default_rng([programs[0].seed, 11, step])
            feeds = [as_user_might_pass(f, rng) for f in feeds]
        pristine = [np.array(f, copy=True) for f in feeds]
        fn = fns[step % len(fns)]
        got = fn(**{t.name: f for t, f in zip(inputs, feeds)}) if mixed else fn(*feeds)
        for t, f, f0 in zip(inputs, feeds, pristine):
            if not np.array_equal(np.asarray(f), f0, equal_nan=f0.dtype.kind == "f"):
                raise AssertionError(f"step {step}: the call wrote into the array fed as input {t.name!r}")
        read = not mixed or step == len(batches) - 1
        per, k = [], 0
        for p in programs:
            n = len(p.outputs)
            per.append((list(got[k:k + n]), [np.array(leaf.value) for leaf in p.leaves] if read else []))
            k += n
        steps.append(per)
    return steps


def as_user_might_pass(a, rng):
    """The same values as `a` in a form a user may pass: as is, Fortran
    order, a strided (non-contiguous) view, a read-only array, or a list."""
    form = int(rng.integers(0, 5))
    if form == 1 and a.ndim >= 2:
        return np.asfortranarray(a)
    if form == 2 and a.ndim >= 1:
        return np.repeat(a, 2, axis=-1)[..., ::2]
    if form == 3:
        b = a.copy()
        b.flags.writeable = False
        return b
    if form == 4:   # nested lists (float32 values survive the trip through Python floats)
        return a.tolist()
    return a


TOLERANCES = {"float64": (1e-6, 1e-8), "float32": (2e-3, 2e-4)}   # (rtol, atol relative to magnitude)


def compare(program, index, ref_steps, got_steps, limit=6):
    """Differences between two runs of program `index` (in a pack): a list of
    strings, empty when every output and param agrees at every step."""
    problems = []
    for step, (ref, got) in enumerate(zip(ref_steps, got_steps)):
        (r_outs, r_leaves), (g_outs, g_leaves) = ref[index], got[index]
        pairs = [(f"output {k} ({o.name!r})", r, g) for k, (o, r, g) in enumerate(zip(program.outputs, r_outs, g_outs))]
        pairs += [(f"{leaf.kind} {leaf.name!r} after the step", r, g)
                  for leaf, r, g in zip(program.leaves, r_leaves, g_leaves)]
        for what, r, g in pairs:
            msg = _differs(np.asarray(r), g, program.precision)
            if msg:
                problems.append(f"step {step}: {what}: {msg}")
                if len(problems) >= limit:
                    return problems
    return problems


def _differs(ref, got, precision="float64"):
    if not isinstance(got, np.ndarray):
        return f"returned {type(got).__name__}, not a NumPy array"
    if got.shape != ref.shape:
        return f"shape {got.shape}, the interpreter gives {ref.shape}"
    if got.dtype != ref.dtype:
        return f"dtype {got.dtype}, the interpreter gives {ref.dtype}"
    if ref.dtype.kind != "f":
        if not np.array_equal(got, ref):
            return f"got {_short(got)}, the interpreter gives {_short(ref)}"
        return None
    rtol, atol = TOLERANCES["float32" if ref.dtype == np.float32 else precision]
    scale = max(1.0, float(np.max(np.abs(ref[np.isfinite(ref)]), initial=0.0)))
    r, g = ref.astype(np.float64), got.astype(np.float64)
    same_nan = np.isnan(r) == np.isnan(g)
    close = np.isclose(g, r, rtol=rtol, atol=atol * scale, equal_nan=True)
    if np.all(close & same_nan):
        return None
    bad = ~(close & same_nan)
    err = np.abs(g - r)[bad]
    return (f"{int(bad.sum())} of {ref.size} elements differ (max abs diff "
            f"{np.nanmax(err) if np.any(~np.isnan(err)) else float('nan'):.3g}); "
            f"got {_short(got)}, the interpreter gives {_short(ref)}")


def _short(a):
    return np.array2string(np.asarray(a), precision=5, threshold=12, edgeitems=3).replace("\n", " ")


def finite(steps):
    """True when every float output and param of a run is finite."""
    for per in steps:
        for outs, leaves in per:
            for a in list(outs) + list(leaves):
                a = np.asarray(a)
                if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                    return False
    return True


# ----- generating ---------------------------------------------------------------------

class GeneratorError(AssertionError):
    pass


# What bpc raises for a graph it rightly refuses to build or compile.
_REFUSED = tuple(getattr(bpc, name) for name in ("ShapeError", "GraphError") if hasattr(bpc, name))


def generate(seed, batches, small=False, taken=()):
    """The program of `seed` (deterministic): the first draw that builds and
    runs with finite values on the interpreter for these batch sizes. `taken`:
    input names already used by other programs of the same function."""
    errors = []
    for attempt in range(40):
        rng = np.random.default_rng([seed, attempt])
        builder = _Builder(seed, rng, small, taken)
        try:
            with np.errstate(all="ignore"):
                prog = builder.build()
        except ShapeError as e:
            errors.append(f"build: {e}")
            continue
        if not prog.outputs:
            continue
        try:
            with np.errstate(all="ignore"):
                steps = run([prog], [compile_pack([prog], "interpret")], batches)
        except _REFUSED as e:   # a malformed draw (e.g. a batch dim no input carries)
            errors.append(f"interpret: {e}")
            continue
        except Exception as e:   # the reference itself fails on a program bpc accepted
            raise GeneratorError(f"seed {seed} (draw {attempt}), batch sizes {batches}: the interpreter "
                                 f"raised {type(e).__name__}: {e}\n{prog.describe()}") from e
        if finite(steps):
            prog.reset()
            return prog
        errors.append("non-finite")
    raise GeneratorError(f"seed {seed}: no usable program in 40 draws; last problems: {errors[-3:]}")

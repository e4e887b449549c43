"""Elementwise ops: each with its NumPy reference, gradient rule and scalar
formula in one definition.

Scalar formulas receive `k` (the code generator's context: `k.c(v)` emits a
constant typed like the op's result, so float32 code never promotes to
float64) and the operands' expressions, and return one Python expression.
NaN must propagate the way NumPy propagates it: `x if x > 0 else 0` would
turn NaN into 0, so the comparisons below are written to keep NaN.
"""
import numpy as np

from ..errors import ShapeError
from ..graph.tensor import as_dtype
from .core import Op, lift, broadcast_shapes, result_dtype, require_float


def _infer(float_only=True, out_float=False):
    def infer(inputs, attrs):
        if float_only:
            require_float(inputs, "")
        dtypes = {i.dtype for i in inputs}
        if len(dtypes) > 1:
            raise ShapeError("operands have different dtypes " + ", ".join(sorted(d.name for d in dtypes)))
        shape = broadcast_shapes(*(i.shape for i in inputs))
        dtype = inputs[0].dtype
        if out_float and dtype.kind != "f":
            dtype = np.dtype("float32")
        return shape, dtype
    return infer


def elementwise(name, numpy, scalar, grad=None, float_only=True, out_float=False, doc=""):
    return Op(name, "elementwise", _infer(float_only, out_float),
              lambda attrs, shape, *xs: numpy(*xs), grad, scalar, doc)


def _promote(*xs):
    """Lift non-tensors and cast operands to one dtype (inserting cast nodes)."""
    like = next((x for x in xs if hasattr(x, "dtype") and hasattr(x, "op")), None)
    ts = [lift(x, like) for x in xs]
    dt = result_dtype(*(t.dtype for t in ts))
    return [t if t.dtype == dt else cast(t, dt) for t in ts]


# ----- arithmetic --------------------------------------------------------------

_add = elementwise("add", np.add, lambda k, a, b: f"({a} + {b})",
                   lambda n, g: (g, g), float_only=False)
_sub = elementwise("sub", np.subtract, lambda k, a, b: f"({a} - {b})",
                   lambda n, g: (g, neg(g)), float_only=False)
_mul = elementwise("mul", np.multiply, lambda k, a, b: f"({a} * {b})",
                   lambda n, g: (g * n.inputs[1], g * n.inputs[0]), float_only=False)
_div = elementwise("div", np.divide, lambda k, a, b: f"({a} / {b})",
                   lambda n, g: (g / n.inputs[1], neg(g) * n / n.inputs[1]))
_neg = elementwise("neg", np.negative, lambda k, a: f"(-{a})",
                   lambda n, g: (neg(g),), float_only=False)


def _never(t, value):
    """True when t is a constant with no element equal to `value` (then a
    guard against that value can be left out of a gradient graph)."""
    return t.kind == "constant" and not np.any(t._value == value)


def _pow_grad(n, g):
    """d/da a**b = b a**(b-1), taken as 0 where b == 0 (a**0 is constant in
    a, while 0 * 0**-1 would be NaN). d/db a**b = a**b log(a), taken as 0
    where a == 0 (as JAX does): there a**b is 0 for b > 0 and 1 for b == 0,
    flat in b from above, while 0 * log(0) would be NaN. log reads 1 in
    place of 0, so no infinity enters the graph (second derivatives stay
    finite too). Negative a gives NaN, as in every framework."""
    a, b = n.inputs
    da = b * a ** (b - 1)
    if not _never(b, 0):
        da = where(equal(b, 0.0), 0.0, da)
    safe_a = a if _never(a, 0) else where(equal(a, 0.0), 1.0, a)
    return g * da, g * (n * log(safe_a))


_pow = elementwise("pow", np.power, lambda k, a, b: f"({a} ** {b})", _pow_grad)


def add(a, b):
    """a + b, with broadcasting."""
    return _add(*_promote(a, b))


def sub(a, b):
    """a - b, with broadcasting."""
    return _sub(*_promote(a, b))


def mul(a, b):
    """a * b, with broadcasting."""
    return _mul(*_promote(a, b))


def div(a, b):
    """a / b (true division), with broadcasting."""
    a, b = _promote(a, b)
    if a.dtype.kind != "f":
        a, b = cast(a, "float32"), cast(b, "float32")
    return _div(a, b)


def neg(a):
    return _neg(lift(a))


def pow(a, b):
    """a ** b. The gradient with respect to b is a**b log(a): 0 where a == 0,
    NaN where a < 0 (as in every framework); a constant exponent has no such
    term. The gradient with respect to a is 0 where b == 0."""
    a, b = _promote(a, b)
    if a.dtype.kind != "f":
        a, b = cast(a, "float32"), cast(b, "float32")
    return _pow(a, b)


# ----- unary math ----------------------------------------------------------------

def _sigmoid_np(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _softplus_np(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


_unary = {
    "exp": (np.exp, lambda k, a: f"math.exp({a})", lambda n, g: (g * n,)),
    "log": (np.log, lambda k, a: f"math.log({a})", lambda n, g: (g / n.inputs[0],)),
    "sqrt": (np.sqrt, lambda k, a: f"math.sqrt({a})", lambda n, g: (g * 0.5 / n,)),
    "abs": (np.abs, lambda k, a: f"abs({a})", lambda n, g: (g * sign(n.inputs[0]),)),
    "square": (np.square, lambda k, a: f"({a} * {a})", lambda n, g: (g * 2.0 * n.inputs[0],)),
    "tanh": (np.tanh, lambda k, a: k.tanh(a), lambda n, g: (g * (1.0 - n * n),)),
    # Where tanh is a vectorized rational function (cpu, float32), sigmoid is
    # 1/2 + tanh(x/2)/2: within 3e-7 of the exact value (exactly 0 or 1
    # beyond |x| ~ 16), ~25x faster than a libm exp per element.
    "sigmoid": (_sigmoid_np, lambda k, a: f"({k.c(0.5)} + {k.c(0.5)} * {k.tanh(f'{k.c(0.5)} * {a}')})"
                if k.rational_tanh else f"({k.c(1)} / ({k.c(1)} + math.exp(-{a})))",
                lambda n, g: (g * n * (1.0 - n),)),
    # `not (a <= 0)` keeps NaN (NaN <= 0 is False), unlike `a > 0`.
    "relu": (lambda x: np.maximum(x, 0), lambda k, a: f"({a} if not ({a} <= {k.c(0)}) else {k.c(0)})",
             lambda n, g: (g * greater(n.inputs[0], 0.0),)),
    "softplus": (_softplus_np,
                 lambda k, a: f"(math.log1p(math.exp(-abs({a}))) + ({a} if {a} > {k.c(0)} else {k.c(0)}))",
                 lambda n, g: (g * sigmoid(n.inputs[0]),)),
    "sign": (np.sign, lambda k, a: f"({k.c(1)} if {a} > {k.c(0)} else ({k.c(-1)} if {a} < {k.c(0)} else {a} * {k.c(0)}))",
             None),
    # Identity whose gradient is zero: marks a value treated as a constant.
    "stop_gradient": (lambda x: x, lambda k, a: a, None),
}
_unary_ops = {name: elementwise(name, f, s, gr) for name, (f, s, gr) in _unary.items()}


def _unary_fn(name):
    op = _unary_ops[name]

    def fn(x, name=None):
        return op(lift(x), name=name)
    fn.__name__ = name
    fn.__doc__ = f"Elementwise {name}."
    return fn


exp = _unary_fn("exp")
_log = _unary_fn("log")


def log(x, name=None):
    """Elementwise log.

    log(exp(z)) is z, and log(exp(z) / s) is z - log(s): built that way
    here, when the node is made, so that `bpc.grad` differentiates the
    stable form. log(softmax(x)) is therefore log_softmax(x) (softmax is
    exp(z) / sum(exp(z))): finite, with finite gradients, where softmax
    underflows to 0. Rewriting later, in the graph passes, would change
    the forward values but not the gradients already derived from them."""
    x = lift(x)
    if x.op is _unary_ops["exp"]:
        return x.inputs[0]
    if x.op is _div and x.inputs[0].op is _unary_ops["exp"]:
        out = sub(x.inputs[0].inputs[0], log(x.inputs[1]))
        if name is not None:
            out.name, out.user_named = name, True
        return out
    return _log(x, name=name)


sqrt = _unary_fn("sqrt")
abs = _unary_fn("abs")
square = _unary_fn("square")
tanh = _unary_fn("tanh")
sigmoid = _unary_fn("sigmoid")
relu = _unary_fn("relu")
softplus = _unary_fn("softplus")
sign = _unary_fn("sign")
stop_gradient = _unary_fn("stop_gradient")

_leaky = Op("leaky_relu", "elementwise", _infer(),
            lambda attrs, shape, x: np.where(x > 0, x, x * x.dtype.type(attrs["alpha"])),
            lambda n, g: (g * where(greater(n.inputs[0], 0.0), 1.0, n.attrs["alpha"]),),
            lambda k, a: f"({a} if {a} > {k.c(0)} else {k.c(k.attrs['alpha'])} * {a})")


def leaky_relu(x, alpha=0.01):
    """x for x > 0, alpha * x otherwise."""
    return _leaky(lift(x), alpha=float(alpha))


# ----- binary choices and comparisons --------------------------------------------

def _choice_grad(first, second):
    """Gradient of an elementwise choice between a and b: the chosen operand
    gets g; on a tie each gets g / 2, as in JAX and PyTorch, and as the
    max reduction shares it (central differences at a tie agree)."""
    def grad(n, g):
        a, b = n.inputs
        tie = equal(a, b) * 0.5
        return g * (first(a, b) + tie), g * (second(a, b) + tie)
    return grad


# NaN in either operand gives NaN, as np.maximum does (and no gradient).
_maximum = elementwise("maximum", np.maximum, lambda k, a, b: f"({a} if ({a} >= {b} or {a} != {a}) else {b})",
                       _choice_grad(lambda a, b: greater(a, b), lambda a, b: less(a, b)), float_only=False)
_minimum = elementwise("minimum", np.minimum, lambda k, a, b: f"({a} if ({a} <= {b} or {a} != {a}) else {b})",
                       _choice_grad(lambda a, b: less(a, b), lambda a, b: greater(a, b)), float_only=False)


def maximum(a, b):
    """Elementwise maximum; on ties the gradient is split evenly between a and b."""
    return _maximum(*_promote(a, b))


def minimum(a, b):
    """Elementwise minimum; on ties the gradient is split evenly between a and b."""
    return _minimum(*_promote(a, b))


def clip(x, lo, hi):
    """Limit x to [lo, hi]; the gradient is 1 inside, zero outside and 1/2
    exactly at a bound (the tie rule of maximum and minimum)."""
    return minimum(maximum(x, lo), hi)


def _where_infer(inputs, attrs):
    c, a, b = inputs
    if a.dtype != b.dtype:
        raise ShapeError(f"branches have different dtypes {a.dtype.name} and {b.dtype.name}")
    return broadcast_shapes(c.shape, a.shape, b.shape), a.dtype


_where = Op("where", "elementwise", _where_infer,
            lambda attrs, shape, c, a, b: np.where(c != 0, a, b),
            lambda n, g: (None, where(n.inputs[0], g, 0.0), where(n.inputs[0], 0.0, g)),
            lambda k, c, a, b: f"({a} if {c} != 0 else {b})")


def where(cond, a, b):
    """Pick `a` where `cond` is nonzero (comparisons give 1.0/0.0 masks), else `b`."""
    like = next((x for x in (a, b, cond) if hasattr(x, "op")), None)
    a, b = _promote(lift(a, like), lift(b, like))
    return _where(lift(cond, a), a, b)


def _comparison(name, np_fn, sym):
    op = elementwise(name, lambda a, b: np_fn(a, b).astype(a.dtype if a.dtype.kind == "f" else np.float32),
                     lambda k, a, b: f"({k.c(1)} if {a} {sym} {b} else {k.c(0)})",
                     None, float_only=False, out_float=True,
                     doc=f"1.0 where a {sym} b else 0.0 (a mask; no gradient flows through it).")

    def fn(a, b):
        return op(*_promote(a, b))
    fn.__name__ = name
    fn.__doc__ = op.__doc__
    return fn


equal = _comparison("equal", np.equal, "==")
not_equal = _comparison("not_equal", np.not_equal, "!=")
less = _comparison("less", np.less, "<")
less_equal = _comparison("less_equal", np.less_equal, "<=")
greater = _comparison("greater", np.greater, ">")
greater_equal = _comparison("greater_equal", np.greater_equal, ">=")


# ----- dtype conversion ----------------------------------------------------------

_cast = Op("cast", "elementwise",
           lambda inputs, attrs: (inputs[0].shape, np.dtype(attrs["dtype"])),
           lambda attrs, shape, x: x.astype(attrs["dtype"]),
           lambda n, g: (cast(g, n.inputs[0].dtype) if n.inputs[0].dtype.kind == "f" else None,),
           lambda k, a: f"{k.dtype_name}({a})")


def cast(x, dtype):
    """Convert to another dtype (float32, float64, int32, int64)."""
    x = lift(x)
    dt = as_dtype(dtype)
    return x if x.dtype == dt else _cast(x, dtype=dt.name)

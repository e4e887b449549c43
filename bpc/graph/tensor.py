"""The graph IR: every value in a bpc program is a `Tensor` node.

A node is either a leaf (an input fed at call time, a parameter or optimizer
state holding a NumPy value, a constant) or the application of an `Op` to
input nodes. Nodes are immutable once built; passes build new nodes.

Shapes are tuples of ints, with `None` for the batch dimension, which is
resolved at call time (one batch size per call, shared by every input).
"""
import itertools

import numpy as np

from ..errors import ShapeError, user_location

_ids = itertools.count()   # node identity (hashing, maps keyed by node); never compared for order

FLOAT_DTYPES = (np.dtype("float32"), np.dtype("float64"))
INT_DTYPES = (np.dtype("int32"), np.dtype("int64"))
DTYPES = FLOAT_DTYPES + INT_DTYPES

def as_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ShapeError(f"unknown dtype {dtype!r}; expected one of "
                         f"{', '.join(d.name for d in DTYPES)}") from None
    if dt == np.dtype(bool):
        return dt
    if dt not in DTYPES:
        raise ShapeError(f"unsupported dtype {dt.name}; expected one of "
                         f"{', '.join(d.name for d in DTYPES)}")
    return dt


def as_shape(shape, what="shape"):
    if isinstance(shape, (int, np.integer)) or shape is None:
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ShapeError(f"{what} must be a tuple of ints or None, got {shape!r}") from None
    out = []
    for d in dims:
        if d is None:
            out.append(None)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0:
            out.append(int(d))
        else:
            raise ShapeError(f"{what} must hold non-negative ints or None, got {shape!r}")
    return tuple(out)


def format_shape(shape):
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class Tensor:
    """A node of the graph: an op applied to inputs, or a leaf.

    Attributes: `op` (None for leaves), `inputs`, `attrs` (the op's static
    parameters), `shape`, `dtype`, `name`, `kind` ("input", "param", "state",
    "constant" or "op"), `where` (file:line of the user code that built it)
    and `origin` ("forward", or "grad" for nodes derived by `bpc.grad`).
    """

    __array_priority__ = 1000  # make `ndarray + Tensor` call Tensor.__radd__

    def __init__(self, kind, shape, dtype, name=None, op=None, inputs=(), attrs=None,
                 value=None, where=None, counter=False):
        self.id = next(_ids)
        self.kind = kind
        self.op = op
        self.inputs = tuple(inputs)
        self.attrs = dict(attrs or {})
        self.shape = shape
        self.dtype = dtype
        self.where = where or user_location()
        self.origin = "forward"   # `bpc.grad` marks the nodes it derives "grad"
        self.name = name or (op.name if op is not None else kind) + f"_{self.id}"
        self._value = value
        self.user_named = name is not None
        # A state that every function reading it advances by one after each
        # call (dropout's random counters); see `state`.
        self.counter = counter
        # The leaf's copy on an accelerator, when a target made one (see
        # bpc.backends.residency); None while the host array is the only copy.
        self._device = None

    # ----- leaf values -------------------------------------------------
    @property
    def value(self):
        """The current NumPy value of a parameter, state buffer or constant."""
        if self.kind not in ("param", "state", "constant"):
            raise AttributeError(f"{self.kind} node '{self.name}' has no value; only "
                                 "parameters, state and constants hold one")
        if self._device is not None:   # a device step may have written it last
            self._device.to_host()
        return self._value

    @value.setter
    def value(self, new):
        if self.kind not in ("param", "state"):
            raise AttributeError(f"cannot set the value of {self.kind} node '{self.name}'")
        arr = np.asarray(new)
        if arr.shape != self._value.shape:
            raise ShapeError(f"param '{self.name}' has shape {self._value.shape}, "
                             f"cannot assign a value of shape {arr.shape}")
        if not np.can_cast(arr.dtype, self.dtype, casting="same_kind"):
            raise ShapeError(f"param '{self.name}' is {self.dtype.name}, "
                             f"cannot assign a {arr.dtype.name} value")
        # In place, so compiled functions holding this buffer see the change.
        np.copyto(self._value, arr, casting="same_kind")
        if self._device is not None:   # the device copy is now stale
            self._device.host_written()

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return (f"<bpc.Tensor {self.name}: {self.dtype.name}{format_shape(self.shape)}"
                f" {self.op.name if self.op else self.kind}>")

    def __hash__(self):
        return hash(self.id)

    def __eq__(self, other):  # elementwise comparison, as in NumPy
        return _ops().equal(self, other)

    def __ne__(self, other):
        return _ops().not_equal(self, other)

    def __bool__(self):
        raise TypeError(f"the truth value of symbolic tensor '{self.name}' is unknown "
                        "until the graph runs; use bpc.where for data-dependent choices")

    # ----- operators ------------------------------------------------------
    def __add__(self, o): return _ops().add(self, o)
    def __radd__(self, o): return _ops().add(o, self)
    def __sub__(self, o): return _ops().sub(self, o)
    def __rsub__(self, o): return _ops().sub(o, self)
    def __mul__(self, o): return _ops().mul(self, o)
    def __rmul__(self, o): return _ops().mul(o, self)
    def __truediv__(self, o): return _ops().div(self, o)
    def __rtruediv__(self, o): return _ops().div(o, self)
    def __pow__(self, o): return _ops().pow(self, o)
    def __rpow__(self, o): return _ops().pow(o, self)
    def __matmul__(self, o): return _ops().matmul(self, o)
    def __rmatmul__(self, o): return _ops().matmul(o, self)
    def __neg__(self): return _ops().neg(self)
    def __pos__(self): return self
    def __abs__(self): return _ops().abs(self)
    def __lt__(self, o): return _ops().less(self, o)
    def __le__(self, o): return _ops().less_equal(self, o)
    def __gt__(self, o): return _ops().greater(self, o)
    def __ge__(self, o): return _ops().greater_equal(self, o)

    @property
    def T(self):
        return _ops().transpose(self)

    def __getitem__(self, key): return _ops().getitem(self, key)

    def __iter__(self):
        raise TypeError("a bpc tensor is not iterable: index it (x[0], x[:, 1:3]) or use bpc.split")

    @property
    def mT(self):
        """Each matrix of a stack transposed (the two last axes exchanged)."""
        return _ops().matrix_transpose(self)

    def sum(self, axis=None, keepdims=False): return _ops().sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _ops().mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return _ops().max(self, axis, keepdims)
    def reshape(self, *shape): return _ops().reshape(self, shape[0] if len(shape) == 1 else shape)
    def astype(self, dtype): return _ops().cast(self, dtype)


def _ops():
    from .. import ops
    return ops


# ----- leaves ---------------------------------------------------------------

def input(name, shape, dtype="float32"):
    """A value fed at call time. `None` in `shape` marks the batch dimension."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ShapeError(f"input name must be a Python identifier, got {name!r}")
    shape = as_shape(shape, f"shape of input '{name}'")
    return Tensor("input", shape, as_dtype(dtype), name=name)


def param(name, shape_or_value, init="glorot_uniform", seed=None, dtype="float32"):
    """A trainable parameter holding a NumPy value.

    `shape_or_value` is a shape (the value is made by the named initializer,
    see `bpc.init`) or an array (the initial value itself, copied).
    """
    from ..init import initialize
    if isinstance(shape_or_value, np.ndarray) or (
            isinstance(shape_or_value, (list, float, int)) and not _looks_like_shape(shape_or_value)):
        arr = np.asarray(shape_or_value)
        dt = as_dtype(dtype if arr.dtype.kind != "f" or dtype != "float32" else arr.dtype)
        if dt.kind != "f":
            raise ShapeError(f"param '{name}' must be floating point, got {arr.dtype.name}")
        value = np.array(arr, dtype=dt, order="C")
    else:
        shape = as_shape(shape_or_value, f"shape of param '{name}'")
        if None in shape:
            raise ShapeError(f"param '{name}' cannot have a batch (None) dimension: {shape}")
        dt = as_dtype(dtype)
        value = initialize(init, shape, dt, seed, name)
    return Tensor("param", value.shape, value.dtype, name=name, value=value)


def _looks_like_shape(obj):
    if isinstance(obj, (int, np.integer)):
        return True
    return isinstance(obj, (tuple, list)) and all(
        d is None or (isinstance(d, (int, np.integer)) and not isinstance(d, bool)) for d in obj)


def state(name, value, counter=False):
    """A non-trainable buffer (optimizer moments, step counters, RNG
    counters). Functions update it in place like a parameter. With
    `counter=True` it is an integer scalar that every function whose graph
    reads it adds one to after each call, without being told to (dropout's
    mask counters: each step draws a new mask)."""
    value = np.array(value, order="C")
    if value.dtype not in DTYPES:
        value = value.astype(np.float32 if value.dtype.kind == "f" else np.int64)
    if counter and (value.shape != () or value.dtype.kind not in "iu"):
        raise ShapeError(f"state '{name}': a counter must be an integer scalar, got "
                         f"{value.dtype.name}{format_shape(value.shape)}")
    return Tensor("state", value.shape, value.dtype, name=name, value=value, counter=bool(counter))


def constant(value, dtype=None, name=None):
    """A constant. Its value is passed to compiled code as an argument, so a
    large constant does not bloat the generated source or its cache key."""
    arr = np.asarray(value)
    if dtype is not None:
        dt = as_dtype(dtype)
    elif arr.dtype.kind == "f":
        dt = np.dtype("float32") if arr.dtype == np.float32 else np.dtype("float64")
    elif arr.dtype.kind == "b":
        dt = np.dtype("float32")
    elif arr.dtype.kind in "iu":
        dt = np.dtype("int64")
    else:
        raise ShapeError(f"constant of unsupported dtype {arr.dtype}")
    arr = np.array(arr, dtype=dt, order="C")  # a copy (ascontiguousarray would make 0-d arrays 1-d)
    arr.flags.writeable = False
    return Tensor("constant", arr.shape, dt, name=name, value=arr)

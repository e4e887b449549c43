"""`Op`: one definition per operation, read by every stage of bpc.

An op bundles, side by side:
  * `infer(inputs, attrs) -> (shape, dtype)`: the shape/dtype rule, run when
    a node is built (errors become `ShapeError` naming the user's line);
  * `numpy(attrs, out_shape, *arrays)`: the NumPy reference the interpreter
    runs and every compiled target is checked against;
  * `grad(node, g) -> tuple`: the gradient rule, written with bpc ops, one
    entry per input (None where no gradient flows);
  * `scalar(k, *args) -> str` for elementwise ops: the per-element formula
    as Python source, shared by the CPU loop bodies and the CUDA kernels.

`iteration` tells the passes and code generators how the op iterates:
"elementwise", "reduce" (over `attrs['axis']`), or "other". The other facts
the passes and code generators need are on the op too, not looked up by
its name:
  * `reduction`: for reductions fused into loop nests, how they fold
    elements (a `Reduction`);
  * `kernel`: for ops that are no loop member, the form of the kernel that
    runs them ("matmul", "view", "random", ...; default: the op's name);
    each compiled target has an emitter per form (`_kernel_<form>` of its
    code generator, or `emit_<form>` in a module it lists in
    `EMITTER_MODULES`), and a missing one is an error naming op and target;
    a "view" aliases its input's buffer (transpose, reshape);
  * `pure`: the same inputs give the same value (False for random numbers,
    which the passes never fold or merge);
  * `gather`: for loop members that move elements rather than compute
    them (slicing and its gradient): `gather(attrs, idx, num) -> (source
    index, condition)` maps the loop's index expressions to the element of
    the input to read, valid where `condition` holds (None: always;
    elsewhere the value is 0), writing the numbers of axis a with `num(a,
    v)` (the target's choice: a constant, or a size read at run time). Such a member has no
    scalar formula; its input need not have the loop's shape.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError
from ..graph.tensor import Tensor, constant, format_shape, FLOAT_DTYPES

OPS = {}


@dataclass(frozen=True)
class Reduction:
    """How a reduction folds the elements it reduces: the accumulator starts
    at the fold's identity, takes each element with `combine` ("add", or
    "max", which keeps NaN as np.max does), and is divided by the element
    count at the end when `mean`. `wide`: float sums accumulate in float64
    (a float32 running sum drifts) and integer ones in int64; a max keeps
    the dtype of its values."""
    combine: str
    mean: bool = False
    wide: bool = True

    def __post_init__(self):
        if self.combine not in ("add", "max"):
            raise ValueError(f"Reduction: combine must be 'add' or 'max', got {self.combine!r}")


class Op:
    def __init__(self, name, iteration, infer, numpy, grad=None, scalar=None, doc="", reduction=None,
                 kernel=None, pure=True, gather=None):
        # Defining an op again under its name replaces it in the registry
        # (re-running a notebook cell); nodes already built keep the Op
        # object they were built with.
        if iteration not in ("elementwise", "reduce", "other"):
            raise ValueError(f"op {name!r}: iteration must be 'elementwise', 'reduce' or 'other', "
                             f"got {iteration!r}")
        if iteration == "reduce" and reduction is None and kernel is None:
            raise ValueError(f"op {name!r}: a reduce op needs a Reduction (how it folds) or a kernel of its own")
        self.name = name
        self.iteration = iteration
        self.infer = infer
        self.numpy = numpy
        self.grad = grad
        self.scalar = scalar
        self.reduction = reduction
        # Ops that loop nests cannot hold run in a kernel of their own.
        self.kernel = kernel if kernel is not None or iteration != "other" else name
        self.pure = pure
        self.gather = gather
        self.__doc__ = doc
        OPS[name] = self

    @property
    def is_view(self):
        """Whether the op's value is a view of its input's buffer."""
        return self.kernel == "view"

    def __repr__(self):
        return f"<bpc op {self.name}>"

    def __call__(self, *inputs, name=None, **attrs):
        return apply(self, inputs, attrs, name)


def apply(op, inputs, attrs, name=None):
    """Build the node `op(*inputs, **attrs)` after checking shapes and dtypes."""
    for i in inputs:
        if not isinstance(i, Tensor):
            raise TypeError(f"{op.name}: expected bpc tensors, got {type(i).__name__}")
    with checking(op.name, *inputs):
        shape, dtype = op.infer(inputs, attrs)
    return Tensor("op", shape, np.dtype(dtype), name=name, op=op, inputs=inputs, attrs=attrs)


class _LocatedShapeError(ShapeError):
    """A ShapeError already naming its op, operands and the user's line."""


class checking:
    """Report a ShapeError raised inside as `opname: message [operands:
    shapes] at file:line`. Shape rules run under it (in `apply`), and so do
    checks a public function makes before building its op (axes, labels),
    so every construction error reads the same way. (A class rather than a
    generator so that no contextlib frame is mistaken for the user's line.)"""

    def __init__(self, opname, *inputs):
        self.opname, self.inputs = opname, inputs

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if kind is None or not issubclass(kind, ShapeError) or isinstance(error, _LocatedShapeError):
            return False
        from ..errors import user_location
        operands = ", ".join(f"{format_shape(i.shape)} {i.dtype.name}" for i in self.inputs
                             if isinstance(i, Tensor))
        raise _LocatedShapeError(f"{self.opname}: {error} [operands: {operands or 'none'}] "
                                 f"at {user_location()}") from None


# ----- helpers shared by the op definitions ---------------------------------

def lift(x, like=None):
    """Turn Python scalars and NumPy arrays into constants. A non-tensor takes
    the float dtype of the tensor it is combined with (so `x * 0.5` stays
    float32), as in NumPy 2's rules for Python scalars."""
    if isinstance(x, Tensor):
        return x
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"cannot use {type(x).__name__} {x!r} in a bpc graph")
    if like is not None and like.dtype.kind == "f" and arr.dtype.kind in "biuf":
        return constant(arr, dtype=like.dtype)
    if like is not None and like.dtype.kind in "iu" and arr.dtype.kind in "biu":
        return constant(arr, dtype=like.dtype)
    return constant(arr)


def broadcast_shapes(*shapes):
    """NumPy broadcasting where `None` is the (unknown) batch size: None
    broadcasts with 1 and with None, and never with another size."""
    ndim = max(len(s) for s in shapes)
    out = []
    for axis in range(ndim):
        dims = {s[axis - ndim + len(s)] for s in shapes if axis - ndim + len(s) >= 0}
        dims.discard(1)
        if not dims:
            out.append(1)
        elif len(dims) == 1:
            out.append(dims.pop())
        else:
            raise ShapeError("shapes " + " and ".join(format_shape(s) for s in shapes)
                             + " cannot be broadcast together"
                             + (" (N, the batch size, matches only N or 1)" if None in dims else ""))
    return tuple(out)


def result_dtype(*dtypes):
    """Floats win over ints; the wider of two floats (or ints) wins."""
    floats = [d for d in dtypes if d.kind == "f"]
    pool = floats or list(dtypes)
    out = pool[0]
    for d in pool[1:]:
        out = np.promote_types(out, d)
    return np.dtype(out)


def normalize_axes(axis, ndim, opname="op"):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)) or not -ndim <= a < ndim:
            raise ShapeError(f"axis {axis!r} is out of range for a {ndim}-d tensor")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {axis!r}")
    return tuple(sorted(out))


def require_float(inputs, opname):
    for i in inputs:
        if i.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"expects floating-point operands, '{i.name}' is {i.dtype.name} "
                             f"(use bpc.cast(x, 'float32'))")


def resolve(shape, batch):
    """Concrete shape for a run with batch size `batch`."""
    return tuple(batch if d is None else d for d in shape)

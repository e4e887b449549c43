"""Reductions, shape ops and matrix products."""
import numpy as np

from ..errors import ShapeError
from ..graph.tensor import Tensor, as_shape, format_shape
from .core import Op, Reduction, broadcast_shapes, checking, lift, normalize_axes, require_float
from .elementwise import equal, cast


# ----- reductions --------------------------------------------------------------

def _reduce_infer(result="same", nonempty=False):
    """Shape/dtype rule of a reduction. `result`: "same" keeps the input's
    dtype, "sum" and "mean" follow NumPy's rules for integer and bool inputs
    (a sum of bools or int32 is int64: it counts; a mean of bools is
    float64), "index" is int64. `nonempty`: the reduction has no identity
    (max, argmax), so a reduced axis of length 0 is refused here, at
    construction, rather than raising on one target and giving -inf on
    another. The batch dimension is never 0 (calls reject empty batches)."""
    def infer(inputs, attrs):
        (x,) = inputs
        axes, keep = attrs["axis"], attrs["keepdims"]
        if nonempty:
            empty = [a for a in axes if x.shape[a] == 0]
            if empty:
                raise ShapeError(f"axis {empty[0]} has length 0, and the maximum of "
                                 f"nothing has no value")
        if keep:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        if result == "index" or result == "sum" and x.dtype.kind in "biu":
            dtype = np.dtype("int64")
        elif result == "mean" and x.dtype.kind == "b":
            dtype = np.dtype("float64")
        else:
            dtype = x.dtype
        return shape, dtype
    return infer


def _keepdims_shape(n):
    x = n.inputs[0]
    return tuple(1 if i in n.attrs["axis"] else d for i, d in enumerate(x.shape))


def _expand(g, n):
    """The gradient of a reduction, reshaped so it broadcasts against the input."""
    return g if n.attrs["keepdims"] else reshape(g, _keepdims_shape(n))


def _np_reduce(fn):
    return lambda attrs, shape, x: fn(x, axis=attrs["axis"], keepdims=attrs["keepdims"])


def _accumulator(x):
    """The dtype sums accumulate in, on every target (see `acc_init` in the
    code generators): float64 for floats, since float32 running sums drift
    and overflow where the result itself fits; int64 for bools and ints."""
    return np.float64 if x.dtype.kind == "f" else np.int64


def _sum_np(attrs, shape, x):
    total = np.sum(x, axis=attrs["axis"], keepdims=attrs["keepdims"], dtype=_accumulator(x))
    return np.asarray(total).astype(np.int64 if x.dtype.kind in "biu" else x.dtype)


def _mean_np(attrs, shape, x):
    # sum / count, as the compiled targets compute it: a mean over a
    # 0-length axis is 0/0 = NaN (NumPy's value, without its warning).
    total = np.sum(x, axis=attrs["axis"], keepdims=attrs["keepdims"], dtype=np.float64)
    count = int(np.prod([x.shape[a] for a in attrs["axis"]], dtype=np.int64))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.asarray(total / np.float64(count))
    return mean.astype(x.dtype if x.dtype.kind == "f" else np.float64)


def _max_grad(n, g):
    """The gradient of max is split evenly among the elements equal to the
    maximum (as in JAX; central differences at a tie agree): each of k tied
    elements gets g / k. NaN in a row gives a NaN gradient for that row."""
    x = n.inputs[0]
    mask = equal(x, _expand(n, n))
    count = sum(mask, n.attrs["axis"], keepdims=True)
    return (mask * (_expand(g, n) / count),)


_sum = Op("sum", "reduce", _reduce_infer("sum"), _sum_np,
          lambda n, g: (broadcast_to(_expand(g, n), n.inputs[0].shape),), reduction=Reduction("add"))
_mean = Op("mean", "reduce", _reduce_infer("mean"), _mean_np,
           lambda n, g: (broadcast_to(_expand(g, n), n.inputs[0].shape)
                         / size_of(n.inputs[0], n.attrs["axis"]),), reduction=Reduction("add", mean=True))
_max = Op("max", "reduce", _reduce_infer(nonempty=True), _np_reduce(np.max), _max_grad,
          reduction=Reduction("max", wide=False))
_argmax = Op("argmax", "reduce", _reduce_infer("index", nonempty=True),
             lambda attrs, shape, x: np.argmax(x, axis=attrs["axis"][0], keepdims=attrs["keepdims"]),
             None, kernel="argmax")


def _reduction(op, x, axis, keepdims):
    x = lift(x)
    with checking(op.name, x):
        axes = normalize_axes(axis, x.ndim)
    if not axes and op is not _argmax:
        # Reducing over no axis reduces nothing: the value itself (in the
        # reduction's dtype, as NumPy gives for axis=()), so no target ever
        # sees a reduction without a reduced axis.
        with checking(op.name, x):
            _, dtype = op.infer((x,), {"axis": axes, "keepdims": bool(keepdims)})
        return cast(x, dtype)
    return op(x, axis=axes, keepdims=bool(keepdims))


def sum(x, axis=None, keepdims=False):
    """Sum over `axis` (an int, a tuple, or None for all axes). As in NumPy,
    a sum of bools or ints is int64 (summing a mask of bools counts), and
    a sum over a 0-length axis is 0. Float32 sums accumulate in float64."""
    return _reduction(_sum, x, axis, keepdims)


def mean(x, axis=None, keepdims=False):
    """Mean over `axis` (an int, a tuple, or None for all axes). The mean of
    bools is float64 (the fraction that is True), as in NumPy; ints must be
    cast to the float dtype wanted. A mean over a 0-length axis is NaN, as
    in NumPy. Float32 means accumulate in float64, then round once."""
    x = lift(x)
    if x.dtype.kind != "b":
        with checking("mean", x):
            require_float([x], "mean")
    return _reduction(_mean, x, axis, keepdims)


def max(x, axis=None, keepdims=False):
    """Maximum over `axis`; the gradient is shared evenly by the maximal
    elements. A reduced axis of length 0 is a ShapeError (no identity)."""
    return _reduction(_max, x, axis, keepdims)


def argmax(x, axis=-1, keepdims=False):
    """Index of the maximum along one axis (int64; no gradient)."""
    x = lift(x)
    if not isinstance(axis, (int, np.integer)):
        with checking("argmax", x):
            raise ShapeError(f"axis must be one int, got {axis!r}")
    return _reduction(_argmax, x, axis, keepdims)


_size_of = Op("size_of", "other",
              lambda inputs, attrs: ((), inputs[0].dtype if inputs[0].dtype.kind == "f" else np.dtype("float32")),
              lambda attrs, shape, x: np.array(np.prod([x.shape[a] for a in attrs["axis"]]),
                                               dtype=x.dtype if x.dtype.kind == "f" else np.float32),
              lambda n, g: (None,))


def size_of(x, axis=None):
    """The number of elements of x along `axis` as a scalar (known only at run
    time when the batch dimension is among them)."""
    return _size_of(x, axis=normalize_axes(axis, x.ndim))


# ----- shape ops ---------------------------------------------------------------

def _transpose_infer(inputs, attrs):
    (x,) = inputs
    perm = attrs["axes"]
    if sorted(perm) != list(range(x.ndim)):
        raise ShapeError(f"axes {perm} are not a permutation of {x.ndim} axes")
    return tuple(x.shape[a] for a in perm), x.dtype


def _transpose_grad(n, g):
    """The gradient flows back through the inverse permutation. Where the
    permutation exchanges the two last axes and the gradient is a matrix
    product (the gradient of W in `x @ W.T`: (xᵀ g)ᵀ), it is built as the
    product of the transposes (gᵀ x): BLAS writes it in W's own layout,
    where a transposed view would be read with strides by the update."""
    inverse = tuple(np.argsort(n.attrs["axes"]).tolist())
    swap = tuple(range(n.ndim - 2)) + (n.ndim - 1, n.ndim - 2)
    flipped = _product_transposed(g) if n.ndim >= 2 and inverse == swap else None
    return (flipped if flipped is not None else transpose(g, inverse),)


def _product_transposed(g):
    """(A @ B) with its two last axes exchanged, as Bᵀ @ Aᵀ (also through a
    sum over leading axes); None for other nodes."""
    if g.op is _matmul and g.inputs[0].ndim >= 2 and g.inputs[1].ndim >= 2:
        a, b = g.inputs
        return matmul(matrix_transpose(b), matrix_transpose(a))
    if g.op is _sum and g.inputs[0].op is _matmul and all(ax < g.inputs[0].ndim - 2 for ax in g.attrs["axis"]):
        inner = _product_transposed(g.inputs[0])
        return None if inner is None else sum(inner, g.attrs["axis"], g.attrs["keepdims"])
    if g.op is _reshape and g.ndim >= 2 and g.inputs[0].shape[-2:] == g.shape[-2:]:
        # sum_to's reshape dropping the unit axes its sum kept
        inner = _product_transposed(g.inputs[0])
        return None if inner is None else reshape(inner, g.shape[:-2] + (g.shape[-1], g.shape[-2]))
    return None


_transpose = Op("transpose", "other", _transpose_infer,
                lambda attrs, shape, x: np.transpose(x, attrs["axes"]), _transpose_grad, kernel="view")


def transpose(x, axes=None):
    """Permute axes (reverse them by default, as `.T` does)."""
    x = lift(x)
    # Negative axes count from the end; out-of-range ones are left for the
    # shape rule to reject (a modulo would silently wrap them).
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(
        int(a) + x.ndim if int(a) < 0 else int(a) for a in axes)
    if axes == tuple(range(x.ndim)):
        return x
    return _transpose(x, axes=axes)


def _static_size(shape):
    return int(np.prod([d for d in shape if d is not None], dtype=np.int64))


def _reshape_infer(inputs, attrs):
    (x,) = inputs
    target = list(attrs["shape"])
    if target.count(-1) > 1:
        raise ShapeError(f"can only infer one dimension (-1) in {attrs['shape']}")
    if x.shape.count(None) != target.count(None):
        # Sizes are N**k times the static part: equal for every N only
        # when both sides hold the batch dimension equally often.
        raise ShapeError(f"cannot reshape {format_shape(x.shape)} to {attrs['shape']}: the batch "
                         "dimension (None) must appear as often in both")
    have = _static_size(x.shape)
    known = _static_size([d for d in target if d != -1])
    if -1 in target:
        if known == 0 or have % known:
            raise ShapeError(f"cannot reshape {format_shape(x.shape)} to {attrs['shape']}")
        target[target.index(-1)] = have // known
    elif known != have:
        raise ShapeError(f"cannot reshape {format_shape(x.shape)} to {attrs['shape']}: "
                         f"{have} elements{' per batch row' if None in x.shape else ''} vs {known}")
    return tuple(target), x.dtype


_reshape = Op("reshape", "other", _reshape_infer,
              lambda attrs, shape, x: x.reshape(shape),
              lambda n, g: (reshape(g, n.inputs[0].shape),), kernel="view")


def reshape(x, shape):
    """Reshape; `None` stands for the batch dimension and -1 is inferred."""
    x = lift(x)
    if isinstance(shape, (int, np.integer)) or shape is None:
        shape = (shape,)
    shape = tuple(None if d is None else int(d) for d in shape)
    if shape == x.shape:
        return x
    out = _reshape(x, shape=shape)
    return out


def _broadcast_infer(inputs, attrs):
    (x,) = inputs
    target = attrs["shape"]
    if len(target) < x.ndim:
        raise ShapeError(f"cannot broadcast {format_shape(x.shape)} to fewer dimensions {format_shape(target)}")
    for d, t in zip(reversed(x.shape), reversed(target)):
        if d != t and d != 1:
            raise ShapeError(f"cannot broadcast {format_shape(x.shape)} to {format_shape(target)}")
    return target, x.dtype


_broadcast_to = Op("broadcast_to", "elementwise", _broadcast_infer,
                   lambda attrs, shape, x: np.broadcast_to(x, shape),
                   lambda n, g: (sum_to(g, n.inputs[0].shape),),
                   lambda k, a: a)


def broadcast_to(x, shape):
    """Repeat x along broadcast dimensions to `shape` (None = batch)."""
    x = lift(x)
    shape = as_shape(shape)
    return x if shape == x.shape else _broadcast_to(x, shape=shape)


def sum_to(g, shape):
    """Sum a broadcast gradient back down to `shape` (the reverse of broadcasting)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and g.shape[lead + i] != 1)
    out = sum(g, axes, keepdims=True) if axes else g
    return reshape(out, shape)


# ----- matrix product ------------------------------------------------------------

def _matmul_infer(inputs, attrs):
    a, b = inputs
    require_float(inputs, "matmul")
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError(f"expects operands of 2 or more dimensions, got {format_shape(a.shape)} @ "
                         f"{format_shape(b.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"inner dimensions differ: {format_shape(a.shape)} @ {format_shape(b.shape)}")
    if a.dtype != b.dtype:
        raise ShapeError(f"operands have different dtypes {a.dtype.name} and {b.dtype.name}")
    try:
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ShapeError as e:
        raise ShapeError(f"leading (batch) dimensions of {format_shape(a.shape)} @ {format_shape(b.shape)} "
                         f"do not broadcast: {e}") from None
    return batch + (a.shape[-2], b.shape[-1]), a.dtype


def matrix_transpose(x):
    """x with its two last axes exchanged: each matrix of a stack
    transposed (NumPy's `matrix_transpose`, `x.mT`)."""
    axes = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    return transpose(x, axes)


_matmul = Op("matmul", "other", _matmul_infer,
             lambda attrs, shape, a, b: np.matmul(a, b),
             # Operands broadcast over leading dimensions take the gradient
             # summed over them (sum_to), as in the elementwise ops.
             lambda n, g: (sum_to(matmul(g, matrix_transpose(n.inputs[1])), n.inputs[0].shape),
                           sum_to(matmul(matrix_transpose(n.inputs[0]), g), n.inputs[1].shape)))


def matmul(a, b):
    """Matrix product `a @ b` with NumPy's rules: operands of more than two
    dimensions are stacks of matrices whose leading dimensions broadcast; a
    1-d operand is a vector (a row on the left, a column on the right) and
    its dimension is dropped from the result. A NumPy operand takes the
    other operand's float dtype, as in the elementwise ops (so `x @ array`
    stays float32 in a float32 graph)."""
    a = lift(a, b if isinstance(b, Tensor) else None)
    b = lift(b, a)
    if a.dtype != b.dtype and a.dtype.kind == b.dtype.kind == "f":
        wide = np.promote_types(a.dtype, b.dtype)
        a, b = cast(a, wide), cast(b, wide)
    with checking("matmul", a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ShapeError(f"operands must have at least one dimension, got {format_shape(a.shape)} @ "
                             f"{format_shape(b.shape)} (use * to scale)")
    row, col = a.ndim == 1, b.ndim == 1
    out = _matmul(reshape(a, (1,) + a.shape) if row else a, reshape(b, b.shape + (1,)) if col else b)
    if row or col:   # drop the vectors' unit axes again
        lead, (m, p) = out.shape[:-2], out.shape[-2:]
        out = reshape(out, lead + ((m,) if not row else ()) + ((p,) if not col else ()))
    return out

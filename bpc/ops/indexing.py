"""Indexing ops: basic slicing (`x[:, 2:5]`, `x[..., 0]`, steps), concat,
stack, split, and take (a gather: rows of an embedding table).

Primitives:
  * `slice`: every axis taken as start + step * i for i < length (a whole
    axis is start 0, step 1); the batch axis is only ever taken whole;
  * `unslice`: its gradient, the values written at those positions of an
    array of zeros (whose own gradient is the slice again);
  (these two run inside the loop kernels that read them, as reads at
  mapped indices: `Op.gather`; the others have kernels of their own)
  * `concat`: inputs side by side along an axis (gradient: slices);
  * `take`: `table` rows (along `axis`) picked by integer ids, a zero row
    for an id outside [0, size) (take is `one_hot(ids) @ table`; when the
    ids are a function's input, calls check their range and raise);
  * `take_grad`: its gradient, rows of g added into a zero table at their
    ids (a scatter-add; its own gradient is take of the incoming gradient).
"""
import builtins
import operator

import numpy as np

from ..errors import ShapeError
from ..graph.tensor import Tensor, format_shape
from .core import Op, checking, lift
from .structural import reshape


def _positions(start, step, length):
    """A Python slice selecting start + step * i for i < length."""
    stop = start + step * length
    return slice(start, None if stop < 0 else stop, step)


def _slice_index(attrs):
    """The NumPy index of a slice node (a batch axis, length None: whole)."""
    return tuple(slice(None) if n is None else _positions(s, st, n)
                 for s, st, n in zip(attrs["starts"], attrs["steps"], attrs["lengths"]))


def _slice_infer(inputs, attrs):
    (x,) = inputs
    return tuple(None if d is None else n for d, n in zip(x.shape, attrs["lengths"])), x.dtype


def _unslice_infer(inputs, attrs):
    (g,) = inputs
    return attrs["shape"], g.dtype


def _unslice_numpy(attrs, shape, g):
    out = np.zeros(shape, dtype=g.dtype)
    out[_slice_index(attrs)] = g
    return out


def _slice_gather(attrs, idx, num):
    """Element i of a slice is x[start + step * i] on every axis (`num(axis,
    v)` writes number v of an axis into the source: itself, or a size read
    at run time)."""
    return [i if n is None else _strided(i, s, st, lambda v, a=a: num(a, v))
            for a, (i, s, st, n) in enumerate(zip(idx, attrs["starts"], attrs["steps"], attrs["lengths"]))], None


def _unslice_gather(attrs, idx, num):
    """Element i of unslice(g) is g[(i - start) / step] where that is a whole
    number in range, else 0."""
    src, conds = [], []
    for a, (i, s, st, n) in enumerate(zip(idx, attrs["starts"], attrs["steps"], attrs["lengths"])):
        if n is None:   # a whole (batch) axis
            src.append(i)
            continue
        q = f"({i} - {num(a, s)})" if s else i
        if st == 1:
            src.append(q)
            conds.append(f"{q} >= 0 and {q} < {num(a, n)}")
        else:
            step = num(a, st)
            src.append(f"({q} // {step})")
            conds.append(f"{q} % {step} == 0 and {q} // {step} >= 0 and {q} // {step} < {num(a, n)}")
    return src, " and ".join(conds) or None


def _strided(i, start, step, num):
    term = i if step == 1 else f"{num(step)} * {i}"
    return term if start == 0 else f"{num(start)} + {term}"


# Both run inside the loop kernels that read them (`Op.gather`): a slice is a
# read at shifted indices, its gradient a read where the slice was taken.
_slice = Op("slice", "elementwise", _slice_infer,
            lambda attrs, shape, x: np.ascontiguousarray(x[_slice_index(attrs)]),
            lambda n, g: (_unslice(g, shape=n.inputs[0].shape, **_geometry(n)),), gather=_slice_gather)
_unslice = Op("unslice", "elementwise", _unslice_infer, _unslice_numpy,
              lambda n, g: (_slice(g, **_geometry(n)),), gather=_unslice_gather)


def _geometry(n):
    return {k: n.attrs[k] for k in ("starts", "steps", "lengths")}


def slice_axes(x, index):
    """x[index] for `index` a tuple of Python slices and ints, one per leading
    axis (fewer: the rest whole); ints drop their axis, as in NumPy."""
    starts, steps, lengths, keep = [], [], [], []
    for axis, d in enumerate(x.shape):
        i = index[axis] if axis < len(index) else slice(None)
        if isinstance(i, slice):
            if d is None:
                if i != slice(None):
                    raise ShapeError(f"axis {axis} is the batch dimension: it can only be taken whole (':'), "
                                     f"got {_show(i)}")
                starts.append(0), steps.append(1), lengths.append(None), keep.append(None)
                continue
            start, stop, step = i.indices(d)
            n = len(range(start, stop, step))
            starts.append(start if n else 0), steps.append(step), lengths.append(n), keep.append(n)
        else:
            if d is None:
                raise ShapeError(f"axis {axis} is the batch dimension: it can only be taken whole (':'), "
                                 f"got the index {i}")
            if not -d <= i < d:
                raise ShapeError(f"index {i} is out of range for axis {axis} of size {d}")
            starts.append(i % d), steps.append(1), lengths.append(1)
    if all(s == 0 and st == 1 and (n is None or n == d)
           for s, st, n, d in zip(starts, steps, lengths, x.shape)):
        out = x
    else:
        out = _slice(x, starts=tuple(starts), steps=tuple(steps), lengths=tuple(lengths))
    return reshape(out, tuple(keep)) if len(keep) != x.ndim else out


def _show(i):
    parts = ["" if v is None else str(v) for v in (i.start, i.stop, i.step)]
    return ":".join(parts[:2] if i.step is None else parts)


def getitem(x, key):
    """x[key] with NumPy's basic indexing: ints (negative from the end),
    slices with steps, `...` and `None` (a new axis of size 1). Index
    arrays are not basic indexing: use `bpc.take`."""
    with checking("getitem", x):
        key = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, (Tensor, np.ndarray, list)) for k in key):
            raise ShapeError("indexing with arrays or tensors is not supported: use bpc.take(x, ids, axis)")
        for k in key:
            if not (k is None or k is Ellipsis or isinstance(k, slice) or _is_int(k)):
                raise ShapeError(f"unsupported index {k!r}: use ints, slices, ... or None")
            if isinstance(k, slice) and not all(v is None or _is_int(v) for v in (k.start, k.stop, k.step)):
                raise ShapeError(f"slice bounds must be ints, got {_show(k)}")
            if isinstance(k, slice) and k.step == 0:
                raise ShapeError("slice step cannot be zero")
        if sum(k is Ellipsis for k in key) > 1:
            raise ShapeError("an index can only have a single ellipsis ('...')")
        used = sum(k is not None and k is not Ellipsis for k in key)
        if used > x.ndim:
            raise ShapeError(f"too many indices: {used} for a {x.ndim}-d tensor")
        if Ellipsis in key:
            at = key.index(Ellipsis)
            key = key[:at] + (slice(None),) * (x.ndim - used) + key[at + 1:]
        index = tuple(operator.index(k) if _is_int(k) else k for k in key if k is not None)
        out = slice_axes(x, index)
    if None in key:   # new axes: where they stand among the axes the result keeps
        shape, kept = [], iter(out.shape)
        for k in key:
            if k is None:
                shape.append(1)
            elif not _is_int(k):
                shape.append(next(kept))
        shape.extend(kept)
        out = reshape(out, tuple(shape))
    return out


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# ----- concat, stack, split ----------------------------------------------------------

def _concat_infer(inputs, attrs):
    axis = attrs["axis"]
    first = inputs[0]
    for t in inputs[1:]:
        if t.ndim != first.ndim or any(a != b for k, (a, b) in enumerate(zip(t.shape, first.shape)) if k != axis):
            raise ShapeError(f"shapes {format_shape(first.shape)} and {format_shape(t.shape)} differ "
                             f"outside axis {axis}")
        if t.dtype != first.dtype:
            raise ShapeError(f"dtypes {first.dtype.name} and {t.dtype.name} differ")
    if any(t.shape[axis] is None for t in inputs):
        raise ShapeError(f"axis {axis} is the batch dimension: tensors cannot be joined along it")
    size = builtins.sum(t.shape[axis] for t in inputs)
    return first.shape[:axis] + (size,) + first.shape[axis + 1:], first.dtype


def _concat_grad(n, g):
    axis, start, grads = n.attrs["axis"], 0, []
    for t in n.inputs:
        index = (slice(None),) * axis + (slice(start, start + t.shape[axis]),)
        grads.append(slice_axes(g, index))
        start += t.shape[axis]
    return tuple(grads)


_concat = Op("concat", "other", _concat_infer,
             lambda attrs, shape, *xs: np.concatenate(xs, axis=attrs["axis"]), _concat_grad)


def _axis(axis, ndim, what):
    if not _is_int(axis) or not -ndim <= axis < ndim:
        raise ShapeError(f"{what}: axis {axis!r} is out of range for {ndim}-d tensors")
    return int(axis) % ndim


def _tensors(xs, what):
    """The items of xs as tensors; Python scalars and arrays take the first
    tensor's float dtype."""
    xs = list(xs)
    if not xs:
        raise ValueError(f"{what}: needs at least one tensor")
    like = next((x for x in xs if isinstance(x, Tensor)), None)
    return [lift(x, like) for x in xs]


def concat(xs, axis=0):
    """Join tensors along an existing axis (np.concatenate); their other
    axes must agree. A Python scalar or array takes the first tensor's float
    dtype."""
    xs = _tensors(xs, "concat")
    with checking("concat", *xs):
        axis = _axis(axis, xs[0].ndim, "concat")
    return xs[0] if len(xs) == 1 else _concat(*xs, axis=axis)


def stack(xs, axis=0):
    """Join tensors of one shape along a new axis (np.stack)."""
    xs = _tensors(xs, "stack")
    with checking("stack", *xs):
        for x in xs[1:]:
            if x.shape != xs[0].shape:
                raise ShapeError(f"tensors must have one shape, got {format_shape(xs[0].shape)} and "
                                 f"{format_shape(x.shape)}")
        axis = _axis(axis, xs[0].ndim + 1, "stack")
    expanded = [reshape(x, x.shape[:axis] + (1,) + x.shape[axis:]) for x in xs]
    return concat(expanded, axis)


def split(x, sections, axis=0):
    """Cut x along `axis` (np.split): `sections` an int (that many equal
    parts) or a list of cut positions. Returns a list of tensors."""
    x = lift(x)
    with checking("split", x):
        axis = _axis(axis, x.ndim, "split")
        d = x.shape[axis]
        if d is None:
            raise ShapeError(f"axis {axis} is the batch dimension: it cannot be split")
        if _is_int(sections):
            if sections <= 0 or d % sections:
                raise ShapeError(f"axis {axis} of size {d} does not split into {sections} equal parts")
            cuts = [d // sections * k for k in range(1, sections)]
        else:
            cuts = [operator.index(c) for c in sections]
    bounds = [0] + cuts + [d]
    return [slice_axes(x, (slice(None),) * axis + (slice(a, b),)) for a, b in zip(bounds, bounds[1:])]


# ----- take (gather) and its scatter-add gradient ------------------------------------

def _take_shape(ids_shape, table_shape, axis):
    return table_shape[:axis] + ids_shape + table_shape[axis + 1:]


def _take_infer(inputs, attrs):
    ids, table = inputs
    return _take_shape(ids.shape, table.shape, attrs["axis"]), table.dtype


def _take_numpy(attrs, shape, ids, table):
    axis, size = attrs["axis"], attrs["label_depth"]
    valid = (ids >= 0) & (ids < size)
    out = np.take(table, np.where(valid, ids, 0), axis=axis)
    mask = valid.reshape((1,) * axis + ids.shape + (1,) * (table.ndim - axis - 1))
    return np.where(mask, out, np.zeros((), table.dtype))


def _take_grad_infer(inputs, attrs):
    ids, g = inputs
    return attrs["shape"], g.dtype


def _take_grad_numpy(attrs, shape, ids, g):
    axis, size = attrs["axis"], attrs["label_depth"]
    out = np.zeros(shape, dtype=g.dtype)
    moved = np.moveaxis(out, axis, 0)
    g_moved = np.moveaxis(g.reshape(shape[:axis] + (-1,) + shape[axis + 1:]), axis, 0)
    flat = ids.reshape(-1)
    keep = (flat >= 0) & (flat < size)
    np.add.at(moved, flat[keep], g_moved[keep])
    return out


_take = Op("take", "other", _take_infer, _take_numpy,
           lambda n, g: (None, _take_grad(n.inputs[0], g, axis=n.attrs["axis"], shape=n.inputs[1].shape,
                                          label_depth=n.attrs["label_depth"])))
_take_grad = Op("take_grad", "other", _take_grad_infer, _take_grad_numpy,
                lambda n, g: (None, _take(n.inputs[0], g, axis=n.attrs["axis"], label_depth=n.attrs["label_depth"])))


def take(table, ids, axis=0):
    """table's slices along `axis` at the integer `ids` (np.take): for an
    embedding table (vocab, dim) and ids (batch, T), a (batch, T, dim)
    tensor. An id outside [0, table.shape[axis]) gives zeros (take is
    one_hot(ids) @ table); when `ids` is a function's input, each call
    checks the range and raises instead. The gradient for the table adds
    each row of the incoming gradient at its id."""
    table, ids = lift(table), lift(ids)
    with checking("take", table, ids):
        if ids.dtype.kind not in "iu":
            raise ShapeError(f"ids must be integers, '{ids.name}' is {ids.dtype.name}")
        axis = _axis(axis, table.ndim, "take")
        if table.shape[axis] is None:
            raise ShapeError(f"axis {axis} is the batch dimension: take from a table with a fixed size")
        if None in ids.shape and None in table.shape:
            raise ShapeError("ids and table cannot both hold the batch dimension")
    return _take(ids, table, axis=axis, label_depth=table.shape[axis])

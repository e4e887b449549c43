"""CUDA kernels of the indexing ops (`bpc/ops/indexing.py`) that have kernels
of their own (slices run inside the loops that read them): one thread per
element of the result, grid-stride, each element gathered from where it
comes from. The scatter-add of take's gradient is the exception: a kernel
zeroes the table's gradient, a second adds each row at its id with atomic
adds (ids may repeat; the order of the additions, and so the last bits of
a sum, can differ from run to run, as in other GPU frameworks).
"""
from ..lowering import size_expr, linear_index


def _threads(gen, shape, var="i"):
    gen._grid_stride("t", size_expr(shape), 1)
    gen._split("t", range(len(shape)), shape, 2)
    return [f"i{a}" for a in range(len(shape))]


def emit_concat(gen, k, describe):
    """The input whose range along the axis holds the element."""
    n = k.node
    axis = n.attrs["axis"]
    idx = _threads(gen, n.shape)
    offset = 0
    for j, x in enumerate(n.inputs):
        src = idx[:axis] + [f"{idx[axis]} - {offset}" if offset else idx[axis]] + idx[axis + 1:]
        end = offset + x.shape[axis]
        keyword = "if" if j == 0 else "elif" if j < len(n.inputs) - 1 else "else"
        gen.emit(f"{keyword} {idx[axis]} < {end}:" if keyword != "else" else "else:", 2)
        gen.emit(gen.write(n, idx, gen.read(x, src)), 3)
        offset = end
    return gen._finish("concat", {"total": n.shape}, describe)


def _take_index(n, idx, ids_ndim):
    """(pre, id index, post) of result index idx."""
    axis = n.attrs["axis"]
    return idx[:axis], idx[axis:axis + ids_ndim], idx[axis + ids_ndim:]


def emit_take(gen, k, describe):
    n = k.node
    ids, table = n.inputs
    idx = _threads(gen, n.shape)
    pre, jdx, post = _take_index(n, idx, ids.ndim)
    gen.emit(f"r = {gen.read(ids, jdx)}", 2)
    value = f"{gen.read(table, pre + ['r'] + post)} if r >= 0 and r < {n.attrs['label_depth']} else {n.dtype.name}(0)"
    gen.emit(gen.write(n, idx, value), 2)
    return gen._finish("take", {"total": n.shape}, describe)


def emit_take_grad(gen, k, describe):
    """Two kernels: zeros, then each element of g added at its id's row."""
    n = k.node
    ids, g = n.inputs
    gen._grid_stride("t", size_expr(n.shape), 1)
    gen.emit(gen.write(n, None, f"{n.dtype.name}(0)", offset="t"), 2)
    lines = gen._finish("take_grad", {"total": n.shape}, f"{describe} (zeros)")
    name = gen._kernel_name
    gen._start(f"{name}_add", k.nodes)
    idx = _threads(gen, g.shape)
    pre, jdx, post = _take_index(n, idx, ids.ndim)
    gen.emit(f"r = {gen.read(ids, jdx)}", 2)
    gen.emit(f"if r >= 0 and r < {n.attrs['label_depth']}:", 2)
    out = gen._use(gen.storage(n), n.dtype)
    gen.emit(f"cuda.atomic.add({out}, {linear_index(pre + ['r'] + post, n.shape)}, {gen.read(g, idx)})", 3)
    return lines + gen._finish("take_grad", {"total": g.shape}, f"{describe} (scatter-add)")

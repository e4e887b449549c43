"""CPU kernels of the indexing ops (`bpc/ops/indexing.py`) that have kernels
of their own (slices run inside the loops that read them): plain loop
nests over the result (or, for the scatter-add, over the ids), one index
expression per axis. Sizes and offsets come from the sizes table
(`RUN_TIME_SIZES` in codegen.py), so every concat or take of one structure
runs the same compiled kernel."""


def _loops(w, shape, depth=1, var="i"):
    """for i0 in range(d0): for i1 ...: returns the depth inside."""
    for a, d in enumerate(shape):
        w.emit(f"for {var}{a} in range({w.dim(d)}):", depth)
        depth += 1
    return depth


def _at(arr, idx):
    return f"{arr}[{', '.join(idx)}]" if idx else f"{arr}[()]"


def emit_concat(gen, k, w):
    """Each input copied to its range along the axis."""
    n = k.node
    axis, offset = n.attrs["axis"], 0
    out = w.array(n)
    for x in n.inputs:
        xa = w.array(x)
        depth = _loops(w, x.shape)
        idx = [f"i{a}" for a in range(x.ndim)]
        dst = idx[:axis] + [f"{w.value(offset)} + i{axis}"] + idx[axis + 1:]
        w.emit(f"{_at(out, dst)} = {_at(xa, idx)}", depth)
        offset += x.shape[axis]


def _take_loops(w, n, ids, table_shape):
    """Loops over the axes before `axis`, then over the ids (r = the id),
    then over the axes after: returns (depth, pre, id index, post index)."""
    axis = n.attrs["axis"]
    pre = [f"i{a}" for a in range(axis)]
    depth = _loops(w, table_shape[:axis])
    for a, d in enumerate(ids.shape):
        w.emit(f"for j{a} in range({w.dim(d)}):", depth)
        depth += 1
    jdx = [f"j{a}" for a in range(ids.ndim)]
    w.emit(f"r = {_at(w.array(ids), jdx)}", depth)
    post = table_shape[axis + 1:]
    w.emit(f"if r >= 0 and r < {w.value(n.attrs['label_depth'])}:", depth)
    return depth, pre, jdx, post


def emit_take(gen, k, w):
    """out[pre, j, post] = table[pre, ids[j], post], zeros for an id out of range."""
    n = k.node
    ids, table = n.inputs
    out, ta = w.array(n), w.array(table)
    depth, pre, jdx, post = _take_loops(w, n, ids, table.shape)
    rest = [f"k{a}" for a in range(len(post))]
    for var, d in zip(rest, post):
        w.emit(f"for {var} in range({w.dim(d)}):", depth + 1)
        depth += 1
    inner = depth + 1
    w.emit(f"{_at(out, pre + jdx + rest)} = {_at(ta, pre + ['r'] + rest)}", inner)
    depth -= len(post)
    w.emit("else:", depth)
    for var, d in zip(rest, post):
        w.emit(f"for {var} in range({w.dim(d)}):", depth + 1)
        depth += 1
    w.emit(f"{_at(out, pre + jdx + rest)} = 0", depth + 1)


def emit_take_grad(gen, k, w):
    """dtable = 0, then dtable[pre, ids[j], post] += g[pre, j, post], one id
    after another (ids may repeat: no parallel loop over them)."""
    n = k.node
    ids, g = n.inputs
    out, ga = w.array(n), w.array(g)
    w.emit(f"{out}[...] = 0", 1)
    depth, pre, jdx, post = _take_loops(w, n, ids, n.shape)
    rest = [f"k{a}" for a in range(len(post))]
    for var, d in zip(rest, post):
        w.emit(f"for {var} in range({w.dim(d)}):", depth + 1)
        depth += 1
    w.emit(f"{_at(out, pre + ['r'] + rest)} += {_at(ga, pre + jdx + rest)}", depth + 1)

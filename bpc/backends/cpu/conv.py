"""CPU kernels of the convolution and pooling ops (`bpc/ops/conv.py`).

Convolutions are matrix products (im2col), one image and one group at a
time: the input elements each output position meets are laid out as
columns (K = C/groups*kh*kw rows, P = OH*OW columns), so the image's
output is W_g (Og, K) @ cols, written straight into y[b]; the weight
gradient accumulates g[b] @ colsᵀ over the images, and the input gradient
scatters the columns Wᵀ @ g[b] back into dx[b] (col2im). The products go
to BLAS (`Generator.gemm_call`). One image's columns stay in the cache
between their layout and their product: LeNet's first convolution took
0.52 ms this way against 0.99 ms with the columns of the whole batch laid
out first (a product of 6 rows over 50,176 columns reads 5 MB from memory,
and its result had to be copied into the NCHW output).

Pooling is direct loops over each window.
"""
from ..lowering import conv_geometry as _geometry, pool_search
from .blas import NO_TRANS, TRANS


# Loops over the kernel offsets (c, i, j) (row r of the columns) and the
# output rows oh (input row hh), shared by the layout and the scatter.
_PER_OFFSET_AND_ROW = """\
for c in range({Cg}):
    for i in range({kh}):
        for j in range({kw}):
            r = (c * {kh} + i) * {kw} + j
            for oh in range({OH}):
                hh = oh * {sh} - {ph} + i * {dh}
"""

# The columns of image b, group g: cols[(c*kh + i)*kw + j, oh*OW + ow] is
# the input element that kernel offset (c, i, j) meets at output (oh, ow),
# 0 in the padding. W_g (Og, K) @ cols is the image's output for the group.
# (Splitting each row into the runs inside and outside the image, to drop
# the test per element, made it 2x slower.)
_IM2COL = _PER_OFFSET_AND_ROW + """\
                for ow in range({OW}):
                    ww = ow * {sw} - {pw} + j * {dw}
                    if hh >= 0 and hh < {H} and ww >= 0 and ww < {W}:
                        cols[r, oh * {OW} + ow] = {x}[b, g * {Cg} + c, hh, ww]
                    else:
                        cols[r, oh * {OW} + ow] = 0"""

# The same elements as rows: rows[oh*OW + ow, (c*kh + i)*kw + j], for the
# weight gradient g[b] (Og, P) @ rows (P, K) where P < K: OpenBLAS took 2.8x
# as long for g[b] @ colsᵀ at LeNet's second convolution (16x64 @ 64x150),
# and as long at its first (6x784 @ 784x25), whose rows take 1.5x as long
# to lay out as its columns.
_IM2ROW = """\
for oh in range({OH}):
    for ow in range({OW}):
        p = oh * {OW} + ow
        for c in range({Cg}):
            for i in range({kh}):
                hh = oh * {sh} - {ph} + i * {dh}
                for j in range({kw}):
                    ww = ow * {sw} - {pw} + j * {dw}
                    if hh >= 0 and hh < {H} and ww >= 0 and ww < {W}:
                        cols[p, (c * {kh} + i) * {kw} + j] = {x}[b, g * {Cg} + c, hh, ww]
                    else:
                        cols[p, (c * {kh} + i) * {kw} + j] = 0"""

# The transposed scatter: every column entry added back to the input
# element of image b it came from (dx[b] must be zero before).
_COL2IM = _PER_OFFSET_AND_ROW + """\
                if hh >= 0 and hh < {H}:
                    for ow in range({OW}):
                        ww = ow * {sw} - {pw} + j * {dw}
                        if ww >= 0 and ww < {W}:
                            {dx}[b, g * {Cg} + c, hh, ww] += cols[r, oh * {OW} + ow]"""


def _begin(w, g, dtype, weights, per_output, rows=False):
    """What the three convolution kernels share: the scratch matrix `cols`
    (K, P) of one image and group ((P, K) with `rows`), the weights (or
    their gradient) as the (O, K) matrix w2, the output (or its gradient)
    as o3 (N, O, P), and the loops over images and groups, with `wg` and
    `og` the group's rows of w2 and of o3[b]."""
    flat = w.scratch((g["K"] * g["P"],), dtype)
    w.emit(f"cols = {flat}.reshape({(g['P'], g['K']) if rows else (g['K'], g['P'])})", 1)
    w.emit(f"w2 = {weights}.reshape(({g['O']}, {g['K']}))", 1)
    w.emit(f"o3 = {per_output}.reshape((N, {g['O']}, {g['P']}))", 1)
    w.emit("for b in range(N):", 1)
    w.emit(f"for g in range({g['G']}):", 2)
    w.emit(f"wg = w2[g * {g['Og']}:(g + 1) * {g['Og']}]", 3)
    w.emit(f"og = o3[b, g * {g['Og']}:(g + 1) * {g['Og']}]", 3)


def _emit(w, text, depth, **names):
    for line in text.format(**names).split("\n"):
        w.emit(line, depth)


def emit_conv2d(gen, k, w):
    """Per image and group: im2col of x, then one GEMM W_g (Og, K) @ cols
    (K, P) into the group's channels of y[b]."""
    n = k.node
    x, wt = n.inputs
    g = _geometry(n, x.shape, wt.shape, n.shape[2:])
    _begin(w, g, n.dtype, w.array(wt), w.array(n))
    _emit(w, _IM2COL, 3, x=w.array(x), **g)
    gen.gemm_call(w, n.dtype, "wg", NO_TRANS, "cols", NO_TRANS, "og", depth=3)


def emit_conv2d_grad_input(gen, k, w):
    """Per image and group: one GEMM W_gᵀ (K, Og) @ g[b] (Og, P), whose
    columns col2im adds back into dx[b]."""
    n = k.node
    gr, wt = n.inputs
    g = _geometry(n, n.shape, wt.shape, gr.shape[2:])
    dx = w.array(n)
    w.emit(f"{dx}[...] = 0", 1)
    _begin(w, g, n.dtype, w.array(wt), w.array(gr))
    gen.gemm_call(w, n.dtype, "wg", TRANS, "og", NO_TRANS, "cols", depth=3)
    _emit(w, _COL2IM, 3, dx=dx, **g)


def emit_conv2d_grad_weight(gen, k, w):
    """Per image and group: im2col (or im2row, where P < K) of x, then dW_g
    (Og, K) += g[b] (Og, P) @ colsᵀ (or @ rows); the first image
    overwrites."""
    n = k.node
    x, gr = n.inputs
    g = _geometry(n, x.shape, n.shape, gr.shape[2:])
    rows = g["P"] < g["K"]
    _begin(w, g, n.dtype, w.array(n), w.array(gr), rows)
    _emit(w, _IM2ROW if rows else _IM2COL, 3, x=w.array(x), **g)
    gen.gemm_call(w, n.dtype, "og", NO_TRANS, "cols", NO_TRANS if rows else TRANS, "wg",
                  beta="0.0 if b == 0 else 1.0", depth=3)
    w.emit("if N == 0:", 1)
    w.emit("w2[...] = 0", 2)


def _pool_search(w, n, x, xa, depth):
    """(bh, bw) of the first maximum of window (oh, ow) of image (b, c)."""
    for line in pool_search(n, x, lambda h, v: f"{xa}[b, c, {h}, {v}]"):
        w.emit(line, depth)


def _pool_windows(w, n, x, depth):
    C = x.shape[1]
    OH, OW = n.attrs["out_hw"]
    w.emit(f"for c in range({C}):", depth)
    w.emit(f"for oh in range({OH}):", depth + 1)
    w.emit(f"for ow in range({OW}):", depth + 2)
    return depth + 3


def emit_max_pool2d(gen, k, w):
    """y[b, c, oh, ow] = v at the position of x's maximum in the window; the
    pooling of x itself (v is x, no padding) needs only the maximum, NaN
    if the window has one."""
    n = k.node
    x, v = n.inputs
    y, xa, va = w.array(n), w.array(x), w.array(v)
    w.emit("for b in prange(N):", 1)
    depth = _pool_windows(w, n, x, 2)
    if v is x and tuple(n.attrs["padding"]) == (0, 0):
        (sh, sw), (kh, kw) = n.attrs["stride"], n.attrs["kernel_hw"]
        for line in [f"best = {xa}[b, c, oh * {sh}, ow * {sw}]", "nan = False",
                     f"for i in range({kh}):", f"    for j in range({kw}):",
                     f"        xv = {xa}[b, c, oh * {sh} + i, ow * {sw} + j]",
                     "        nan |= xv != xv", "        best = xv if xv > best else best",
                     f"{y}[b, c, oh, ow] = {typed_nan(n.dtype)} if nan else best"]:
            w.emit(line, depth)
        return
    _pool_search(w, n, x, xa, depth)
    w.emit(f"{y}[b, c, oh, ow] = {va}[b, c, bh, bw]", depth)


def typed_nan(dtype):
    return f"{dtype.name}(math.nan)"


def emit_max_pool2d_grad(gen, k, w):
    """dx: each g added at the position of its window's maximum of x."""
    n = k.node
    x, gr = n.inputs
    dx, xa, ga = w.array(n), w.array(x), w.array(gr)
    w.emit("for b in prange(N):", 1)
    w.emit(f"{dx}[b] = 0", 2)
    depth = _pool_windows(w, n, x, 2)
    _pool_search(w, n, x, xa, depth)
    w.emit(f"{dx}[b, c, bh, bw] += {ga}[b, c, oh, ow]", depth)

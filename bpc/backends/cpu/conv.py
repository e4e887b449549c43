"""CPU kernels of the convolution and pooling ops (`bpc/ops/conv.py`).

Convolutions are matrix products (im2col): per group, the input elements
each output position meets are laid out as columns (K = C/groups*kh*kw
rows, N*OH*OW columns), so the convolution is W (O, K) @ cols, the weight
gradient gm @ colsᵀ and the input gradient's columns Wᵀ @ gm, scattered
back (col2im); gm is the output gradient as (O, N*OH*OW). The products go
to BLAS (`Generator.gemm_call`); the layout loops run in parallel over
the batch (or the channels), each writing its own part.

Pooling is direct loops over each window.
"""
from ..lowering import conv_geometry as _geometry
from .blas import NO_TRANS, TRANS


# The columns of one group: cols[(c*kh + i)*kw + j, b*P + oh*OW + ow] is the
# input element that kernel offset (c, i, j) meets at output (b, oh, ow),
# 0 in the padding. Rows of W (O, K) times these columns are the output.
# (Splitting each row into the runs inside and outside the image, to drop
# the test per element, made it 2x slower.)
_IM2COL = """\
for b in prange(N):
    for c in range({Cg}):
        for i in range({kh}):
            for j in range({kw}):
                r = (c * {kh} + i) * {kw} + j
                for oh in range({OH}):
                    hh = oh * {sh} - {ph} + i * {dh}
                    base = b * {P} + oh * {OW}
                    for ow in range({OW}):
                        ww = ow * {sw} - {pw} + j * {dw}
                        if hh >= 0 and hh < {H} and ww >= 0 and ww < {W}:
                            cols[r, base + ow] = {x}[b, g * {Cg} + c, hh, ww]
                        else:
                            cols[r, base + ow] = 0"""

# The transposed scatter: every column entry added back to the input
# element it came from (dx must be zero before).
_COL2IM = """\
for b in prange(N):
    for c in range({Cg}):
        for i in range({kh}):
            for j in range({kw}):
                r = (c * {kh} + i) * {kw} + j
                for oh in range({OH}):
                    hh = oh * {sh} - {ph} + i * {dh}
                    if hh >= 0 and hh < {H}:
                        base = b * {P} + oh * {OW}
                        for ow in range({OW}):
                            ww = ow * {sw} - {pw} + j * {dw}
                            if ww >= 0 and ww < {W}:
                                {dx}[b, g * {Cg} + c, hh, ww] += cols[r, base + ow]"""

# The output gradient (o3) of one group as a (Og, N*P) matrix.
_GATHER = """\
for o in prange({Og}):
    for b in range(N):
        for p in range({P}):
            gm[o, b * {P} + p] = o3[b, g * {Og} + o, p]"""


def _scratch(w, name, rows, per_image, dtype):
    """`name` = a (rows, N*per_image) scratch matrix of the workspace."""
    flat = w.scratch((None, rows * per_image), dtype)
    w.emit(f"{name} = {flat}.reshape(({rows}, N * {per_image}))", 1)


def _begin(w, g, dtype, rows, weights, per_output):
    """What the three convolution kernels share: the scratch matrices `cols`
    (K, N*P) and `rows` (Og, N*P), the weights (or their gradient) as the
    (O, K) matrix w2, the output (or its gradient) as o3 (N, O, P), and
    the loop over groups."""
    _scratch(w, "cols", g["K"], g["P"], dtype)
    _scratch(w, rows, g["Og"], g["P"], dtype)
    w.emit(f"w2 = {weights}.reshape(({g['O']}, {g['K']}))", 1)
    w.emit(f"o3 = {per_output}.reshape((N, {g['O']}, {g['P']}))", 1)
    w.emit(f"for g in range({g['G']}):", 1)


def _emit(w, text, depth, **names):
    for line in text.format(**names).split("\n"):
        w.emit(line, depth)


def emit_conv2d(gen, k, w):
    """Per group: im2col of x, one GEMM W_g (Og, K) @ cols (K, N*P), then
    the result rows copied to y (N, O, OH, OW)."""
    n = k.node
    x, wt = n.inputs
    g = _geometry(n, x.shape, wt.shape, n.shape[2:])
    xa = w.array(x)
    _begin(w, g, n.dtype, "res", w.array(wt), w.array(n))
    _emit(w, _IM2COL, 2, x=xa, **g)
    w.emit(f"wg = w2[g * {g['Og']}:(g + 1) * {g['Og']}]", 2)
    gen.gemm_call(w, n.dtype, "wg", NO_TRANS, "cols", NO_TRANS, "res", depth=2)
    _emit(w, """for b in prange(N):
    for o in range({Og}):
        for p in range({P}):
            o3[b, g * {Og} + o, p] = res[o, b * {P} + p]""", 2, **g)


def emit_conv2d_grad_input(gen, k, w):
    """Per group: the output gradient as (Og, N*P), one GEMM W_gᵀ (K, Og) @
    it, then col2im adds the columns back into dx."""
    n = k.node
    gr, wt = n.inputs
    g = _geometry(n, n.shape, wt.shape, gr.shape[2:])
    dx = w.array(n)
    w.emit(f"{dx}[...] = 0", 1)
    _begin(w, g, n.dtype, "gm", w.array(wt), w.array(gr))
    _emit(w, _GATHER, 2, **g)
    w.emit(f"wg = w2[g * {g['Og']}:(g + 1) * {g['Og']}]", 2)
    gen.gemm_call(w, n.dtype, "wg", TRANS, "gm", NO_TRANS, "cols", depth=2)
    _emit(w, _COL2IM, 2, dx=dx, **g)


def emit_conv2d_grad_weight(gen, k, w):
    """Per group: im2col of x and the output gradient as (Og, N*P); one
    GEMM gm @ colsᵀ writes the group's rows of dw (O, K)."""
    n = k.node
    x, gr = n.inputs
    g = _geometry(n, x.shape, n.shape, gr.shape[2:])
    xa = w.array(x)
    _begin(w, g, n.dtype, "gm", w.array(n), w.array(gr))
    _emit(w, _IM2COL, 2, x=xa, **g)
    _emit(w, _GATHER, 2, **g)
    w.emit(f"dwg = w2[g * {g['Og']}:(g + 1) * {g['Og']}]", 2)
    gen.gemm_call(w, n.dtype, "gm", NO_TRANS, "cols", TRANS, "dwg", depth=2)


def _pool_search(w, n, x, xa, depth):
    """Lines finding, in window (oh, ow) of image (b, c), the position
    (bh, bw) of x's first maximum inside the image (NaN counts as the
    maximum, as np.argmax). Without padding every window lies inside the
    image: the search is branch-free (selects of the best value, its flat
    offset k and the first NaN's); a short-circuit `>` or `!=` test per
    element was 7-18x slower on random data (mispredicted branches)."""
    (sh, sw), (ph, pw) = n.attrs["stride"], n.attrs["padding"]
    kh, kw = n.attrs["kernel_hw"]
    H, W = x.shape[2:]
    if (ph, pw) == (0, 0):
        lines = [f"best = {xa}[b, c, oh * {sh}, ow * {sw}]", "k = 0", "nk = -1",
                 f"for i in range({kh}):",
                 f"    for j in range({kw}):",
                 f"        xv = {xa}[b, c, oh * {sh} + i, ow * {sw} + j]",
                 "        more = xv > best",
                 "        best = xv if more else best",
                 f"        k = i * {kw} + j if more else k",
                 "        first_nan = (xv != xv) & (nk < 0)",
                 f"        nk = i * {kw} + j if first_nan else nk",
                 "if nk >= 0:",
                 "    k = nk",
                 f"bh = oh * {sh} + k // {kw}",
                 f"bw = ow * {sw} + k % {kw}"]
    else:
        lines = [f"best = {xa}[b, c, 0, 0]", "bh = -1", "bw = -1",
                 f"for i in range({kh}):",
                 f"    hh = oh * {sh} - {ph} + i",
                 f"    if hh >= 0 and hh < {H}:",
                 f"        for j in range({kw}):",
                 f"            ww = ow * {sw} - {pw} + j",
                 f"            if ww >= 0 and ww < {W}:",
                 f"                xv = {xa}[b, c, hh, ww]",
                 "                if bh < 0 or xv > best or (xv != xv and best == best):",
                 "                    best = xv", "                    bh = hh", "                    bw = ww"]
    for line in lines:
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

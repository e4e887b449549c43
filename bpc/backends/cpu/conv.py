"""CPU kernels of the convolution and pooling ops (`bpc/ops/conv.py`):
direct loops.

Each kernel walks the kernel offsets (c, i, j) and, for every output row
whose input row lies inside the image, the run of output columns whose
input column does too (bounds computed per offset, so no test per
element): the innermost loop is a contiguous axpy when the stride is 1.
Batch elements (or output channels, for the weight gradient) run in
parallel, each writing only its own part of the result.
"""

ROW = "for oh in range({OH}):\n    hh = oh * {sh} - {ph} + i * {dh}\n    if hh >= 0 and hh < {H}:"


def _geometry(n, x_shape, w_shape, out_hw):
    (sh, sw), (ph, pw), (dh, dw), groups = (n.attrs[k] for k in ("stride", "padding", "dilation", "groups"))
    C, H, W = x_shape[1:]
    O, Cg, kh, kw = w_shape
    OH, OW = out_hw
    return dict(sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw, C=C, H=H, W=W, O=O, Cg=Cg, kh=kh, kw=kw,
                OH=OH, OW=OW, Og=O // groups)


def _offsets(w, g, depth, inner):
    """Loops over c, i, j, then the output rows and columns that read
    inside the image; `inner` is the statement at (oh, ow) with input
    position (hh, ww)."""
    lines = ["for c in range({Cg}):", "    for i in range({kh}):", "        for j in range({kw}):",
             "            off = j * {dw} - {pw}",
             "            lo = max(0, (-off + {sw} - 1) // {sw})",
             "            hi = min({OW}, ({W} - 1 - off) // {sw} + 1)"]
    lines += ["            " + line for line in ROW.split("\n")]
    lines += ["                    for ow in range(lo, hi):",
              "                        ww = ow * {sw} + off",
              "                        " + inner]
    for line in lines:
        w.emit(line.format(**g), depth)


def emit_conv2d(gen, k, w):
    """y[n, o] = sum over c, i, j of w[o, c, i, j] * x[n, c0 + c] shifted."""
    n = k.node
    x, wt = n.inputs
    g = _geometry(n, x.shape, wt.shape, n.shape[2:])
    y, xa, wa = w.array(n), w.array(x), w.array(wt)
    w.emit("for b in prange(N):", 1)
    w.emit(f"for o in range({g['O']}):", 2)
    w.emit(f"c0 = (o // {g['Og']}) * {g['Cg']}", 3)
    w.emit(f"{y}[b, o] = 0", 3)
    _offsets(w, g, 3, f"{y}[b, o, oh, ow] += {wa}[o, c, i, j] * {xa}[b, c0 + c, hh, ww]")


def emit_conv2d_grad_input(gen, k, w):
    """dx[n, c0 + c] += w[o, c, i, j] * g[n, o], scattered back to the input
    positions the forward convolution read."""
    n = k.node
    gr, wt = n.inputs
    g = _geometry(n, n.shape, wt.shape, gr.shape[2:])
    dx, ga, wa = w.array(n), w.array(gr), w.array(wt)
    w.emit("for b in prange(N):", 1)
    w.emit(f"{dx}[b] = 0", 2)
    w.emit(f"for o in range({g['O']}):", 2)
    w.emit(f"c0 = (o // {g['Og']}) * {g['Cg']}", 3)
    _offsets(w, g, 3, f"{dx}[b, c0 + c, hh, ww] += {wa}[o, c, i, j] * {ga}[b, o, oh, ow]")


def emit_conv2d_grad_weight(gen, k, w):
    """dw[o, c, i, j] = sum over n, oh, ow of g[n, o, oh, ow] * x[n, c0 + c]
    shifted; parallel over output channels."""
    n = k.node
    x, gr = n.inputs
    g = _geometry(n, x.shape, n.shape, gr.shape[2:])
    dwa, xa, ga = w.array(n), w.array(x), w.array(gr)
    w.emit(f"for o in prange({g['O']}):", 1)
    w.emit(f"c0 = (o // {g['Og']}) * {g['Cg']}", 2)
    w.emit(f"{dwa}[o] = 0", 2)
    w.emit("for b in range(N):", 2)
    _offsets(w, g, 3, f"{dwa}[o, c, i, j] += {ga}[b, o, oh, ow] * {xa}[b, c0 + c, hh, ww]")


def _pool_search(w, n, x, xa, depth):
    """Lines finding, in window (oh, ow) of image (b, c), the position
    (bh, bw) of x's first maximum inside the image (NaN counts as the
    maximum, as np.argmax)."""
    (sh, sw), (ph, pw) = n.attrs["stride"], n.attrs["padding"]
    kh, kw = n.attrs["kernel_hw"]
    H, W = x.shape[2:]
    for line in [f"best = {xa}[b, c, 0, 0]", "bh = -1", "bw = -1",
                 f"for i in range({kh}):",
                 f"    hh = oh * {sh} - {ph} + i",
                 f"    if hh >= 0 and hh < {H}:",
                 f"        for j in range({kw}):",
                 f"            ww = ow * {sw} - {pw} + j",
                 f"            if ww >= 0 and ww < {W}:",
                 f"                xv = {xa}[b, c, hh, ww]",
                 "                if bh < 0 or xv > best or (xv != xv and best == best):",
                 "                    best = xv", "                    bh = hh", "                    bw = ww"]:
        w.emit(line, depth)


def _pool_windows(w, n, x, depth):
    C = x.shape[1]
    OH, OW = n.attrs["out_hw"]
    w.emit(f"for c in range({C}):", depth)
    w.emit(f"for oh in range({OH}):", depth + 1)
    w.emit(f"for ow in range({OW}):", depth + 2)
    return depth + 3


def emit_max_pool2d(gen, k, w):
    """y[b, c, oh, ow] = v at the position of x's maximum in the window."""
    n = k.node
    x, v = n.inputs
    y, xa, va = w.array(n), w.array(x), w.array(v)
    w.emit("for b in prange(N):", 1)
    depth = _pool_windows(w, n, x, 2)
    _pool_search(w, n, x, xa, depth)
    w.emit(f"{y}[b, c, oh, ow] = {va}[b, c, bh, bw]", depth)


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

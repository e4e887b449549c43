"""CPU kernels of the convolution ops (`bpc/ops/conv.py`): direct loops.

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

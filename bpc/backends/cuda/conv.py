"""CUDA kernels of the convolution and pooling ops (`bpc/ops/conv.py`).

One thread per element of the result, grid-stride, every element computed
by gathering (no atomics, no races): a convolution output sums over its
window; an input-gradient element over the outputs whose windows cover it
(stride and dilation decide which); a weight-gradient element over the
batch and the output positions; a pooling gradient element over the
windows that chose it. Direct loops: correct on every geometry, and
simple enough for the simulator; a tiled formulation is future work.
"""
from ..lowering import conv_geometry as _geometry, pool_search, size_expr


def _threads(gen, n):
    """A grid-stride loop over n's elements with i0..i3 their indices."""
    gen._grid_stride("t", size_expr(n.shape), 1)
    gen._split("t", range(4), n.shape, 2)


def _emit(gen, lines, depth):
    for line in lines:
        gen.emit(line, depth)


def emit_conv2d(gen, k, describe):
    n = k.node
    x, wt = n.inputs
    g = _geometry(n, x.shape, wt.shape, n.shape[2:])
    _threads(gen, n)
    xv = gen.read(x, ["i0", f"(i1 // {g['Og']}) * {g['Cg']} + c", "hh", "ww"])
    wv = gen.read(wt, ["i1", "c", "i", "j"])
    _emit(gen, [f"acc = {n.dtype.name}(0)",
                f"for c in range({g['Cg']}):",
                f"    for i in range({g['kh']}):",
                f"        hh = i2 * {g['sh']} - {g['ph']} + i * {g['dh']}",
                f"        if hh >= 0 and hh < {g['H']}:",
                f"            for j in range({g['kw']}):",
                f"                ww = i3 * {g['sw']} - {g['pw']} + j * {g['dw']}",
                f"                if ww >= 0 and ww < {g['W']}:",
                f"                    acc += {wv} * {xv}",
                gen.write(n, ["i0", "i1", "i2", "i3"], "acc")], 2)
    return gen._finish("conv2d", {"total": n.shape}, describe)


def emit_conv2d_grad_input(gen, k, describe):
    """dx[b, cin, h, w] = sum over the group's o and (i, j) with output
    position (h + ph - i*dh) / sh, (w + pw - j*dw) / sw whole and inside."""
    n = k.node
    gr, wt = n.inputs
    g = _geometry(n, n.shape, wt.shape, gr.shape[2:])
    _threads(gen, n)
    gv = gen.read(gr, ["i0", f"(i1 // {g['Cg']}) * {g['Og']} + o", "oh", "ow"])
    wv = gen.read(wt, [f"(i1 // {g['Cg']}) * {g['Og']} + o", f"i1 % {g['Cg']}", "i", "j"])
    _emit(gen, [f"acc = {n.dtype.name}(0)",
                f"for o in range({g['Og']}):",
                f"    for i in range({g['kh']}):",
                f"        th = i2 + {g['ph']} - i * {g['dh']}",
                f"        if th >= 0 and th % {g['sh']} == 0 and th // {g['sh']} < {g['OH']}:",
                f"            oh = th // {g['sh']}",
                f"            for j in range({g['kw']}):",
                f"                tw = i3 + {g['pw']} - j * {g['dw']}",
                f"                if tw >= 0 and tw % {g['sw']} == 0 and tw // {g['sw']} < {g['OW']}:",
                f"                    ow = tw // {g['sw']}",
                f"                    acc += {wv} * {gv}",
                gen.write(n, ["i0", "i1", "i2", "i3"], "acc")], 2)
    return gen._finish("conv2d_grad_input", {"total": n.shape}, describe)


def emit_conv2d_grad_weight(gen, k, describe):
    """dw[o, c, i, j] = sum over b, oh, ow of g[b, o, oh, ow] * x at the
    position offset (i, j) meets."""
    n = k.node
    x, gr = n.inputs
    g = _geometry(n, x.shape, n.shape, gr.shape[2:])
    _threads(gen, n)
    xv = gen.read(x, ["b", f"(i0 // {g['Og']}) * {g['Cg']} + i1", "hh", "ww"])
    gv = gen.read(gr, ["b", "i0", "oh", "ow"])
    _emit(gen, [f"acc = {n.dtype.name}(0)",
                "for b in range(N):",
                f"    for oh in range({g['OH']}):",
                f"        hh = oh * {g['sh']} - {g['ph']} + i2 * {g['dh']}",
                f"        if hh >= 0 and hh < {g['H']}:",
                f"            for ow in range({g['OW']}):",
                f"                ww = ow * {g['sw']} - {g['pw']} + i3 * {g['dw']}",
                f"                if ww >= 0 and ww < {g['W']}:",
                f"                    acc += {gv} * {xv}",
                gen.write(n, ["i0", "i1", "i2", "i3"], "acc")], 2)
    return gen._finish("conv2d_grad_weight", {"total": n.shape}, describe)


def _pool_search(gen, n, x, depth):
    """(bh, bw) of the first maximum of window (oh, ow) of image (i0, i1)."""
    _emit(gen, pool_search(n, x, lambda h, w: gen.read(x, ["i0", "i1", h, w])), depth)


def emit_max_pool2d(gen, k, describe):
    n = k.node
    x, v = n.inputs
    _threads(gen, n)
    _emit(gen, ["oh = i2", "ow = i3"], 2)
    _pool_search(gen, n, x, 2)
    gen.emit(gen.write(n, ["i0", "i1", "i2", "i3"], gen.read(v, ["i0", "i1", "bh", "bw"])), 2)
    return gen._finish("max_pool2d", {"total": n.shape}, describe)


def emit_max_pool2d_grad(gen, k, describe):
    """dx[b, c, h, w] = the sum of g over the windows covering (h, w) whose
    maximum is there."""
    n = k.node
    x, gr = n.inputs
    (sh, sw), (ph, pw) = n.attrs["stride"], n.attrs["padding"]
    kh, kw = n.attrs["kernel_hw"]
    OH, OW = n.attrs["out_hw"]
    _threads(gen, n)
    _emit(gen, [f"acc = {n.dtype.name}(0)",
                f"for oh in range(max(0, (i2 + {ph} - {kh}) // {sh} + 1), min({OH}, (i2 + {ph}) // {sh} + 1)):",
                f"    for ow in range(max(0, (i3 + {pw} - {kw}) // {sw} + 1), min({OW}, (i3 + {pw}) // {sw} + 1)):"],
          2)
    _pool_search(gen, n, x, 4)
    _emit(gen, ["if bh == i2 and bw == i3:",
                f"    acc += {gen.read(gr, ['i0', 'i1', 'oh', 'ow'])}"], 4)
    gen.emit(gen.write(n, ["i0", "i1", "i2", "i3"], "acc"), 2)
    return gen._finish("max_pool2d_grad", {"total": n.shape}, describe)
